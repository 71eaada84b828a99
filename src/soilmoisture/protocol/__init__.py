"""The training protocol: fold plans, runs tracked in MLflow, prediction for users."""
