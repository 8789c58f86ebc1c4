"""``symnoise leaderboard``: ARC-Challenge, HellaSwag and MMLU scores of a checkpoint through lm-evaluation-harness."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from symnoise.evaluation import sources
from symnoise.evaluation.leaderboard import format_table, run_leaderboard
from symnoise.evaluation.leaderboard_tasks import LEADERBOARD_TASKS, LeaderboardError
from symnoise.files import write_text_atomic
from symnoise.layout import LEADERBOARD, RunLayout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a folder written by save_pretrained, or a hub model name")
    parser.add_argument(
        "--tasks",
        default=",".join(LEADERBOARD_TASKS),
        help="comma-separated subset of: "
        + ", ".join(f"{t.name} ({t.num_fewshot}-shot {t.metric})" for t in LEADERBOARD_TASKS.values())
        + " (default all)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="local data folder laid out like ../shared/data (arc/, hellaswag/, mmlu/); default: "
        f"${sources.DATA_DIR_ENV}, else the harness's own tasks and hub datasets",
    )
    source.add_argument(
        "--online",
        action="store_true",
        help=f"use the harness's own tasks and the hub datasets even when ${sources.DATA_DIR_ENV} is set",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="score only the first N documents of each task (of each MMLU subject); quick checks only",
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="B")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="write the report as JSON (default for a local run directory: "
        f"{(RunLayout('CHECKPOINT').eval_dir / LEADERBOARD).as_posix()}, where `symnoise report` looks for it)",
    )


def run(args: argparse.Namespace) -> int:
    source = sources.resolve_leaderboard(
        None if args.online else sources.data_dir(args.data_dir), args.online
    )
    print(f"tasks from {source.describe()}", file=sys.stderr)
    try:
        report = run_leaderboard(
            args.checkpoint,
            args.tasks,
            data_dir=source.data_dir,
            online=source.online,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
        )
    except LeaderboardError as error:
        print(f"symnoise leaderboard: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if report.get("truncated_requests"):
        print(
            f"{report['truncated_requests']} requests were longer than the model's context; the harness cut them "
            f"from the left (the first: {report['truncation_example']})",
            file=sys.stderr,
        )
    if args.limit is not None:
        print(f"(--limit {args.limit}: partial scores, not comparable with the leaderboard)")
    out = args.out
    run = RunLayout(args.checkpoint)
    if out is None and run.run_info.is_file():
        out = run.eval_dir / LEADERBOARD
    if out is not None:
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
