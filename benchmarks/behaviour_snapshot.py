"""Smoke runs of every family and every discriminator game, their summary values in one JSON
file: run it before and after a change to genlab's internals and compare the files
(`--compare A.json B.json` prints every value that differs).

    python benchmarks/behaviour_snapshot.py --out before.json            # on the old code
    python benchmarks/behaviour_snapshot.py --out after.json             # on the new code
    python benchmarks/behaviour_snapshot.py --compare before.json after.json

Each case is `genlab-train debug=smoke <overrides>` in a folder of its own; CASES maps a case's
name to its overrides (in the syntax of the code that runs it: `--legacy` gives the override
spelling of genlab before the components redesign).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    "vae": [],
    "vae_beta4": ["model/objective=elbo", "model.objective.beta=4"],
    "vae_iwae3": ["model/objective=iwae", "model.objective.k=3"],
    "vae_elbo_k3": ["model/objective=elbo_k", "model.objective.k=3"],
    "vae_mlp": ["model/net=mlp"],
    "vae_uniform_eps": ["model.posterior=uniform"],
    "vae_gaussian_learned_std": ["model/likelihood=gaussian", "model.likelihood.learn_std=true"],
    "named_vae": ["model=named_vae", "model.labelled_fraction=0.5"],
    "dae_gaussian": ["model=dae", "corruption=gaussian"],
    "dae_masking_walkback": ["model=dae", "corruption=masking", "model.objective.walkback=1"],
    "dcgan_plain": ["model=dcgan"],
    "dcgan_instance_noise_blur": ["model=dcgan", "model/d_mode=instance_noise", "corruption=blur"],
    "dcgan_three_class": ["model=dcgan", "model/d_mode=three_class", "corruption=gaussian"],
    "dcgan_noise_head": ["model=dcgan", "model/d_mode=noise_head", "corruption=gaussian"],
    "dcgan_hinge_patch_r1": ["model=dcgan", "model.loss=hinge", "model.discriminator.head=patch",
                             "model.discriminator.norm=layer", "model.r1_gamma=1"],
    "dcgan_wgan_gp_ema_ada": ["model=dcgan", "model.loss=wgan_gp", "model.discriminator.norm=layer",
                              "model.ema_decay=0.9", "model/d_mode=instance_noise", "corruption=gaussian",
                              "corruption.schedule.kind=adaptive"],
    "restoration_gan_blur": ["model=restoration_gan", "corruption=blur"],
    "restoration_gan_degraded_d": ["model=restoration_gan", "corruption=masking", "model.degraded_d=true"],
    "rbm_cd": ["model=rbm"],
    "rbm_pcd": ["model=rbm", "model.objective.persistent=true", "model.objective.k=2"],
    "deep_mlp": ["model=deep_mlp"],
}

# the same cases in the override syntax of genlab before the components redesign
LEGACY = {
    "vae_beta4": ["model.beta=4"],
    "vae_iwae3": ["model.iwae_k=3"],
    "vae_elbo_k3": ["model.elbo_k=3"],
    "vae_mlp": ["model.arch=mlp"],
    "vae_uniform_eps": ["model.eps=uniform"],
    "vae_gaussian_learned_std": ["model.likelihood=gaussian", "model.learn_std=true"],
    "named_vae": ["model=named_vae", "model.labelled_fraction=0.5"],
    "dae_masking_walkback": ["model=dae", "corruption=masking", "model.walkback=1"],
    "dcgan_instance_noise_blur": ["model=dcgan", "model.d_mode=instance_noise", "corruption=blur"],
    "dcgan_three_class": ["model=dcgan", "model.d_mode=three_class", "corruption=gaussian"],
    "dcgan_noise_head": ["model=dcgan", "model.d_mode=noise_head", "corruption=gaussian"],
    "dcgan_hinge_patch_r1": ["model=dcgan", "model.loss=hinge", "model.d_head=patch", "model.d_norm=layer",
                             "model.r1_gamma=1"],
    "dcgan_wgan_gp_ema_ada": ["model=dcgan", "model.loss=wgan_gp", "model.d_norm=layer", "model.ema_decay=0.9",
                              "model.d_mode=instance_noise", "corruption=gaussian",
                              "corruption.schedule.kind=adaptive"],
    "rbm_pcd": ["model=rbm", "model.persistent=true", "model.k=2"],
}


def run_case(name: str, overrides: list[str], root: Path) -> dict:
    out = root / name
    cmd = [sys.executable, "-m", "genlab.train", "debug=smoke", "logger=csv", f"paths.log_dir={out}",
           *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    (summary,) = out.glob("**/summary.json")
    values = json.loads(summary.read_text())
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not k.endswith("_s")}


def compare(a: dict, b: dict) -> int:
    differ = 0
    for case in sorted(set(a) | set(b)):
        va, vb = a.get(case, {}), b.get(case, {})
        for key in sorted(set(va) | set(vb)):
            x, y = va.get(key), vb.get(key)
            same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
            if not same:
                differ += 1
                print(f"{case}: {key}: {x} -> {y}")
    n = sum(len(v) for v in a.values())
    print(f"{differ} of {n} values differ over {len(a)} cases")
    return 1 if differ else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--legacy", action="store_true", help="the override syntax of genlab before components")
    p.add_argument("--case", nargs="*", help="only these cases")
    p.add_argument("--compare", nargs=2, type=Path)
    args = p.parse_args()
    if args.compare:
        return compare(*(json.loads(f.read_text()) for f in args.compare))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES.items():
            if args.case and name not in args.case:
                continue
            if args.legacy:
                overrides = LEGACY.get(name, overrides)
            results[name] = run_case(name, overrides, Path(tmp))
            print(name, results[name].get("error", f"{len(results[name])} values"), flush=True)
            args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
