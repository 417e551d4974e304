"""`pilot score`: rescore saved answers with validation's own scorers, without generating again (thin)."""

from __future__ import annotations

import click

from flows.validate_cli import UNSAFE_HELP


@click.command()
@click.option("--format", "fmt", required=True, type=click.Choice(["gsm8k", "mmlu", "humaneval"]),
              help="the benchmark whose upstream columns the input rows have")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="JSONL: one item per line in the format's columns, plus `response` (the model's answer)")
@click.option("--output", required=True, type=click.Path(), help="JSONL to write (must not exist): each input row "
              "plus correct, extracted (null: nothing could be read), and for code status and detail")
@click.option("--unsafe-code-execution", is_flag=True, help=UNSAFE_HELP)
def score(fmt: str, input_path: str, output: str, unsafe_code_execution: bool) -> None:
    """Score saved answers as validation does: GSM8K and MMLU read as lm-evaluation-harness reads them (the
    marked answer, else the flexible reading; both lm-eval readings kept per row), HumanEval sanitized as EvalPlus
    does and run in the sandbox."""
    from evaluation.score import score_file

    s = score_file(fmt, input_path, output, unsafe=unsafe_code_execution)
    click.echo(f"{s.rows} answers: {s.correct} correct ({s.correct / s.rows:.1%}), nothing read from "
               f"{s.unparsed}" + (f"; code ran in {s.code_execution}" if s.code_execution else "") + f" -> {output}")
