"""lm-evaluation-harness task definitions for the leaderboard tasks on local data (see ``leaderboard.py``).

The YAML files here hold everything but where the data lives; ``symnoise.evaluation.leaderboard`` converts the
local files to JSON Lines and writes, per task, a small YAML that includes one of these and adds ``dataset_kwargs``.
"""
