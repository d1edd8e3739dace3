"""Optuna searches: the study's storage, the sampler by name, and the search space from Hydra's
sweep syntax. genlab's sweeper (hydra_plugins.genlab_plugins.OptunaSweeper) and each run's
pruning callback (genlab.callbacks.pruning) both go through here, and only through Optuna's public
API (ask-and-tell).

Storage (`hydra.sweeper.storage`): a file path is a journal file (Optuna's JournalStorage, one
appended log, locked by an open(O_EXCL) lock file, which works on NFS; the default, in the sweep
folder); a URL (`postgresql://user@host/db`) is a database; null keeps the study in memory (no
resuming, no pruning across processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genlab.config import ConfigError, require_choice

# the study's journal file in a search's sweep folder (the default hydra.sweeper.storage)
JOURNAL = "optuna.journal"
# hydra.sweeper.sampler.name -> the optuna.samplers class
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
}


def open_storage(spec: str | None):
    """The study storage `spec` names (see the module's docstring); None for an in-memory study."""
    import optuna

    if spec is None or str(spec) in ("", "null", "None"):
        return None
    spec = str(spec)
    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(spec, lock_obj=JournalFileOpenLock(spec)))


def sampler_config(cfg: Mapping | None) -> tuple[str, dict[str, Any]]:
    """(name, keyword arguments) of `hydra.sweeper.sampler`: `{name: tpe, seed: 1, ...}`, or the
    old form `{_target_: optuna.samplers.TPESampler, ...}` of the same five samplers."""
    args = dict(cfg or {})
    name = args.pop("name", None)
    if name is not None:
        require_choice(name, "hydra.sweeper.sampler.name", list(SAMPLERS))
    target = args.pop("_target_", None)
    if target is not None:
        by_class = {f"optuna.samplers.{cls}": n for n, cls in SAMPLERS.items()}
        require_choice(target, "hydra.sweeper.sampler._target_", list(by_class))
        if name is not None and name != by_class[target]:
            raise ConfigError(f"hydra.sweeper.sampler.name={name!r} disagrees with its _target_ "
                              f"{target}; allowed: one of them")
        name = by_class[target]
    return name or "tpe", args


def make_sampler(cfg: Mapping | None, distributions: dict, seed_offset: int = 0):
    """The optuna sampler `hydra.sweeper.sampler` names, built with its other keys; a seed is
    moved on by `seed_offset` (a resumed search would otherwise draw its first trials again). The
    grid sampler's grid is the search space, whose every parameter must then be a choice or range."""
    import optuna

    name, args = sampler_config(cfg)
    if args.get("seed") is not None:
        args["seed"] = int(args["seed"]) + seed_offset
    if name == "grid":
        args["search_space"] = grid(distributions)
    try:
        return getattr(optuna.samplers, SAMPLERS[name])(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler={dict(cfg or {})!r} is invalid for sampler "
                          f"{name}: {e}") from None


def grid(distributions: dict) -> dict[str, list]:
    """The grid sampler's search space: every value of each choice or range parameter."""
    import optuna.distributions as d

    out = {}
    for key, dist in distributions.items():
        if isinstance(dist, d.CategoricalDistribution):
            out[key] = list(dist.choices)
        elif isinstance(dist, d.IntDistribution) and not dist.log:
            out[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ConfigError(f"hydra.sweeper.params.{key} is {dist}, invalid for the grid "
                              "sampler; allowed: choice(...) or range(...)")
    return out


def grid_size(distributions: dict) -> int:
    size = 1
    for values in grid(distributions).values():
        size *= len(values)
    return size


def search_space(params: Mapping | None, arguments: list[str]) -> tuple[dict, dict[str, str]]:
    """(distributions, fixed) from `hydra.sweeper.params` ({key: "interval(0.1, 1)"}) and the
    command line's overrides: a sweep (choice, range, interval, int(interval), tag(log,
    interval)) is an Optuna distribution, any other value a fixed override, which wins over a
    distribution of the same key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    distributions, fixed = {}, {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            distributions[key] = _distribution(o)
            fixed.pop(key, None)
        else:
            fixed[key] = o.get_value_element_as_str()
            distributions.pop(key, None)
    return distributions, fixed


def _distribution(o):
    import optuna.distributions as d
    from hydra.core.override_parser.types import Transformer

    value = o.value()
    if o.is_choice_sweep() or (o.is_range_sweep() and value.shuffle):
        return d.CategoricalDistribution(list(o.sweep_iterator(transformer=Transformer.encode)))
    if o.is_range_sweep():  # range(start, stop, step): stop excluded, as in Python
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return d.IntDistribution(value.start, value.stop - value.step, step=value.step)
        return d.FloatDistribution(value.start, value.stop - value.step, step=value.step)
    if o.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log)
        return d.FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(f"{o.input_line} is invalid in a search; allowed: choice(...), range(...), "
                      "interval(a, b), int(interval(a, b)), tag(log, interval(a, b))")


def tell(study, number: int, value: float | None, state) -> None:
    """study.tell, also for the last point of a grid: the grid sampler then stops the study,
    which only optimize() allows (Optuna raises after storing the trial's result)."""
    try:
        study.tell(number, value, state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def trial_overrides(params: dict[str, Any], fixed: dict[str, str]) -> list[str]:
    """The Hydra overrides of a trial with `params` (choices are stored as Hydra encodes them)."""
    return [f"{k}={v}" for k, v in {**params, **fixed}.items()]
