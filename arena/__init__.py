"""The game: data, models, training, victims, defenses, oracle, referee and metrics.

Never imports Ray, Optuna or MLflow, so a whole match can be played in one process.
"""
