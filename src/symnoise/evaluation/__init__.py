"""Evaluation of fine-tuned models: AlpacaEval judging and win rates, output statistics, leaderboard tasks."""
