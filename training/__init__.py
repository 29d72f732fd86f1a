"""Training and offline evaluation of the models served from model_repository/."""
