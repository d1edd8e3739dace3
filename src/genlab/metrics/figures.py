"""Figures of a model's latent space, drawn by the evaluators (genlab.callbacks.evaluators) into
the run's samples folder."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor


def principal_plane(mu: Tensor) -> Tensor:
    """[D, 2]: the two orthonormal directions of the largest spread of the means (D > 2), the
    identity for D = 2. Projections of N(0, I) onto orthonormal directions are N(0, I) again, so
    the prior's circles keep their meaning in this plane."""
    if mu.shape[1] == 2:
        return torch.eye(2, dtype=mu.dtype)
    _, _, vh = torch.linalg.svd(mu - mu.mean(0), full_matrices=False)
    return vh[:2].T


def aggregate_posterior_figure(mu: Tensor, z: Tensor, eps: str, labels: Tensor | None = None,
                               classes: list[str] | None = None) -> Figure:
    """The latent space seen two ways: the posterior means, and one draw z ~ q(z | x) per image
    (the aggregate posterior the prior should match), each with the prior N(0, I)'s 1-, 2- and
    3-sigma circles; with more than two latent units, both projected on the means' first two
    principal directions (principal_plane). `eps` names q(z | x)'s family, for the title. With
    class labels, each point in its class's colour and a legend of the classes."""
    plane = principal_plane(mu)
    pcs = mu.shape[1] > 2
    fig = Figure(figsize=(10.5 if labels is not None else 9, 4.8), layout="constrained")
    circle = np.linspace(0, 2 * np.pi, 200)
    colours = matplotlib.colormaps["tab10" if classes is None or len(classes) <= 10 else "tab20"]
    for i, (points, title) in enumerate([(mu, "posterior means"),
                                         (z, f"one draw per image from q(z|x), eps={eps}")]):
        ax = fig.add_subplot(1, 2, i + 1)
        xy = (points @ plane).numpy()
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.4, linewidths=0)
        else:
            for c, name in enumerate(classes):
                mine = (labels == c).numpy()
                ax.scatter(xy[mine, 0], xy[mine, 1], s=3, alpha=0.6, linewidths=0,
                           color=colours(c % colours.N), label=name)
        for r in (1, 2, 3):
            ax.plot(r * np.cos(circle), r * np.sin(circle), color="grey", linewidth=0.7)
        where = f"; plane of the means' 2 principal directions ({mu.shape[1]}-D)" if pcs else ""
        ax.set(title=f"{title}\n{len(points)} images{where}\ncircles: prior at 1, 2, 3 sigma",
               xlabel="PC 1" if pcs else "z_1", ylabel="PC 2" if pcs else "z_2", aspect="equal")
        ax.title.set_fontsize("small")
    if labels is not None:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right center",
                   title="class", markerscale=4, fontsize="small")
    return fig
