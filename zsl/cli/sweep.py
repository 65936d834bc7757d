"""Write a W&B sweep YAML for a model's ``search`` grid: ``python -m zsl.cli.sweep model=ale``.

Every sweep point runs ``train.py`` with the ``val`` protocol (validation classes only), so a
sweep can fan out over many machines with ``wandb agent`` without touching the test split;
then run the chosen point once with ``data.protocol=test``. The local grid selection of
``train.py`` stays the default.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from zsl.cli.compose import compose_spec
from zsl.errors import ConfigError


def sweep_config(argv: list[str]) -> dict[str, Any]:
    """The sweep definition (a dict ready for ``yaml.safe_dump``) for the composed config."""
    model = compose_spec([a for a in argv if not a.startswith("out=")]).model
    metric = model.search.metric
    parameters: dict[str, Any] = {
        f"model.params.{key}": {"values": list(values)} for key, values in model.search.grid.items()
    }
    if not parameters:  # a grid of one point still makes a valid sweep
        first = model.grid_points()[0]
        key = next(iter(first))
        parameters[f"model.params.{key}"] = {"value": first[key]}
    fixed = [a for a in argv if not a.startswith(("data.protocol=", "out="))]
    return {
        "program": "train.py",
        "method": "grid",
        "metric": {"name": f"final/{metric}", "goal": "maximize"},
        "parameters": parameters,
        "command": [
            "${env}",
            "python",
            "${program}",
            *fixed,
            "data.protocol=val",
            "selection.grid=false",
            "${args_no_hyphens}",
        ],
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), None)
    try:
        sweep = sweep_config(argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    text = yaml.safe_dump(sweep, sort_keys=False)
    if out:
        Path(out).write_text(text)
        print(f"wrote {out}; start it with: wandb sweep {out} && wandb agent <sweep id>")
    else:
        print(text)


if __name__ == "__main__":
    main()
