"""``python -m redegrade.train.average``: average the weights of several checkpoints of one run.

Why: with the small model, checkpoints 250 steps apart differ in what they transfer (noise on one,
blur on the next; see the model card), and the step that scores best on a handful of photos is partly
luck. The mean of a window of checkpoints (stochastic weight averaging, Izmailov et al. 2018) sits
between those swings. Checkpoints must share one config; BatchNorm statistics are averaged like the
weights (identical anyway when training ran with ``--freeze-bn``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import click
import torch

from redegrade.cli import setup_logging, user_errors
from redegrade.errors import CheckpointError
from redegrade.model import UniversalDegradationModel, load_state
from redegrade.model.io import save_state, weights_state

log = logging.getLogger("redegrade.train")


def average_models(models: list[UniversalDegradationModel]) -> UniversalDegradationModel:
    """A model whose floating-point weights and buffers are the mean of ``models``' (one shared config)."""
    if not models:
        raise CheckpointError("nothing to average")
    config = models[0].config
    for m in models[1:]:
        if m.config != config:
            raise CheckpointError(f"cannot average models of different configs: {m.config} vs {config}")
    states = [weights_state(m) for m in models]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[-1].items()}
    out = UniversalDegradationModel(config)
    out.load_state_dict(mean, strict=False)  # compressai's coder tables are derived, not saved
    return out.eval()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Redegrader folder to write (config.json + model.safetensors).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@user_errors
def main(checkpoints: tuple[Path, ...], out: Path, verbose: bool) -> None:
    """Average CHECKPOINTS (training checkpoints or redegrader folders of one config) into OUT.

    \b
    Example:
      python -m redegrade.train.average run/snaps/step_1000.pt run/snaps/step_1250.pt --out averaged
    """
    setup_logging(verbose)
    model = average_models([load_state(p) for p in checkpoints])
    save_state(model, out)
    log.info("averaged %d checkpoints into %s", len(checkpoints), out)


if __name__ == "__main__":
    main()
