"""The embedded Triton launcher's pure parts: its flags, log rotation, the log's error lines."""

from __future__ import annotations

from pathlib import Path

from tools.embedded_triton import (
    ISOLATION_ARGS,
    TritonInstall,
    TritonPorts,
    TritonProcess,
    error_lines,
    previous_log_path,
    rotate_log,
)

# Lines as Triton 2.51 wrote them for a model whose initialize raised (abridged tables).
BROKEN_MODEL_LOG = "\n".join(
    [
        'I1207 10:54:04.905286 17218 pinned_memory_manager.cc:277] "Pinned memory pool created"',
        'E1207 10:54:04.905286 17218 server.cc:241] "CudaDriverHelper has not been initialized."',
        "E1207 10:54:06.938512 17218 model_lifecycle.cc:642] \"failed to load 'moving_average' "
        r'version 2: Internal: RuntimeError: broken\n\nAt:\n  /m/2/model.py(6): initialize\n"',
        "I1207 10:54:06.938567 17218 model_lifecycle.cc:777] \"failed to load 'moving_average'\"",
        "+----------------------------------+-------+",
        "| Option                           | Value |",
        "+----------------------------------+-------+",
        "| strict_readiness                 | 0     |",
        "+----------------------------------+-------+",
        "E1207 10:55:20.677249883   19097 chttp2_server.cc:1060]          UNKNOWN:No address added",
        'E1207 10:55:20.680636 19097 main.cc:245] "failed to start GRPC service: Socket '
        "'127.0.0.1:1' already in use \"",
        "error: creating server: Internal - failed to load all models",
    ]
)


def test_the_command_keeps_serving_when_a_model_fails_to_load(tmp_path: Path) -> None:
    install = TritonInstall(tmp_path / "tritonserver", tmp_path, tmp_path, tmp_path)
    process = TritonProcess(tmp_path, TritonPorts(1, 2, 3), extra_args=("--log-verbose=1",))
    command = process.command(install)
    assert {"--exit-on-error=false", "--strict-readiness=false"} <= set(command)
    assert set(ISOLATION_ARGS) <= set(command)
    assert command[-1] == "--log-verbose=1"  # a caller's flags come last and win


def test_previous_log_sits_beside_the_log() -> None:
    assert previous_log_path(Path(".run/triton.log")) == Path(".run/triton.previous.log")
    assert previous_log_path(Path("/x/triton-2.log")) == Path("/x/triton-2.previous.log")


def test_rotation_keeps_exactly_the_previous_run(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    assert rotate_log(log) is None  # nothing yet
    log.write_text("run 1\n")
    assert rotate_log(log) == tmp_path / "triton.previous.log"
    assert not log.exists()
    assert (tmp_path / "triton.previous.log").read_text() == "run 1\n"
    log.write_text("run 2\n")
    rotate_log(log)
    assert (tmp_path / "triton.previous.log").read_text() == "run 2\n"  # run 1 is gone


def test_an_empty_log_does_not_replace_the_previous_one(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    (tmp_path / "triton.previous.log").write_text("run 1\n")
    log.write_text("")
    assert rotate_log(log) is None
    assert (tmp_path / "triton.previous.log").read_text() == "run 1\n"


def test_error_lines_are_the_errors_not_the_option_table() -> None:
    errors = error_lines(BROKEN_MODEL_LOG)
    assert errors == [
        "failed to load 'moving_average' version 2: Internal: RuntimeError: broken "
        "At: /m/2/model.py(6): initialize",
        "UNKNOWN:No address added",
        "failed to start GRPC service: Socket '127.0.0.1:1' already in use",
        "error: creating server: Internal - failed to load all models",
    ]
    assert not any("Option" in line or "CudaDriverHelper" in line for line in errors)


def test_log_errors_reads_only_this_start(tmp_path: Path) -> None:
    process = TritonProcess(tmp_path, TritonPorts(1, 2, 3), log_path=tmp_path / "triton.log")
    assert process.log_errors() == "no log file"
    (tmp_path / "triton.log").write_text('I1207 10:54:04.905286 17218 a.cc:1] "fine"\n')
    assert process.log_errors().startswith("no error lines in ")
    (tmp_path / "triton.log").write_text(BROKEN_MODEL_LOG)
    summary = process.log_errors()
    assert summary.startswith(f"errors in {tmp_path / 'triton.log'}:\n")
    assert "RuntimeError: broken" in summary and "Option" not in summary
