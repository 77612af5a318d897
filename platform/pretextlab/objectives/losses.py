"""Loss functions of the objectives, as plain functions on tensors (checked against lightly's
implementations in tests). Distributed gathers live in ``distributed.py``; these are per-process."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO cross-entropy (Caron et al. 2021): every teacher global view against every student view
    except the same one. ``teacher`` holds raw logits; it is centred and sharpened here."""
    t_probs = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    s_logp = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, n = torch.zeros((), device=student[0].device), 0
    for i, tp in enumerate(t_probs):
        for j, sl in enumerate(s_logp):
            if i == j:
                continue
            total = total + torch.sum(-tp * sl, dim=-1).mean()
            n += 1
    return total / n


def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp centring of teacher logits (SwAV, DINOv2/v3): equipartitioned assignments."""
    q = torch.exp((logits.float() - logits.float().max()) / temp).t()  # K x B
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019, DINOv2): -mean log distance to nearest neighbour."""
    x = F.normalize(x, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nn_idx = dots.argmax(dim=1)
    dist = F.pairwise_distance(x, x[nn_idx], eps=eps)
    return -torch.log(dist + eps).mean()


def ntxent_loss(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): 2N-way softmax, positives are the other view."""
    z = F.normalize(torch.cat([z0, z1]), dim=-1)
    n = z0.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def vicreg_loss(
    z0: torch.Tensor, z1: torch.Tensor, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg (Bardes et al. 2022): invariance (MSE) + variance hinge at std 1 + off-diagonal covariance."""
    inv = F.mse_loss(z0, z1)

    def var(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + eps)
        return torch.mean(F.relu(1.0 - std))

    def cov(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        c = (z.t() @ z) / (n - 1)
        off = c - torch.diag(torch.diagonal(c))
        return off.pow(2).sum() / d

    v = 0.5 * (var(z0) + var(z1))  # averaged over the two branches, as the reference code
    c = cov(z0) + cov(z1)
    loss = lambda_ * inv + mu * v + nu * c
    return loss, {"invariance": inv.detach(), "variance": v.detach(), "covariance": c.detach()}


def latent_regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """I-JEPA / V-JEPA latent loss: smooth-L1 (the reference code) or L2 (the paper)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    raise ValueError(f"unknown latent loss {kind!r} (smooth_l1, l2, l1)")


def mae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    masked: torch.Tensor | None = None,
    norm_pix: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """MAE pixel loss (He et al. 2022): MSE on masked patches, targets normalised per patch.

    ``pred``/``target`` are (B, N, P) patch pixels; ``masked`` is (B, N) with 1 where masked
    (None: every patch counts).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    if masked is None:
        return per_patch.mean()
    return (per_patch * masked).sum() / masked.sum().clamp(min=1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in row-major order (as MAE)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, gh: int, gw: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def gram_loss(
    student: torch.Tensor, teacher: torch.Tensor, normalize: bool = True, remove_neg: bool = False
) -> torch.Tensor:
    """DINOv3 Gram anchoring (Siméoni et al. 2025, arXiv 2508.10104, Sec. 4.2; reference code
    facebookresearch/dinov3 ``dinov3/loss/gram_loss.py``, image-level variant).

    ``student`` and ``teacher`` are patch features (B, N, D) of the same images. Each is
    L2-normalised per patch, its Gram matrix X Xᵀ (B, N, N) of patch-to-patch cosine similarities is
    formed per image, and the loss is the mean squared difference of the two Gram matrices, i.e.
    ||X_S X_Sᵀ − X_G X_Gᵀ||²_F / (B N²). ``remove_neg`` clips negative similarities to zero in both
    (off in DINOv3's configs). The teacher side carries no gradient.
    """
    s = student.float()
    t = teacher.detach().float()
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    s_sim = s @ s.transpose(-1, -2)
    t_sim = t @ t.transpose(-1, -2)
    if remove_neg:
        s_sim, t_sim = s_sim.clamp_min(0.0), t_sim.clamp_min(0.0)
    return F.mse_loss(s_sim, t_sim)


def sigreg(
    x: torch.Tensor,
    num_slices: int = 256,
    knots: int = 17,
    t_max: float = 3.0,
    directions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SIGReg, LeJEPA's sketched isotropic Gaussian regulariser (Balestriero & LeCun 2025,
    arXiv 2511.08544; reference code rbalestr-lab/lejepa, ``MINIMAL.md``).

    ``x`` (N, D) is projected on ``num_slices`` random unit directions (D, M) (or the given
    ``directions``). On each 1-D projection the Epps-Pulley statistic compares the empirical
    characteristic function φ_N(t) = mean_n exp(i t x_n) with the standard normal's φ(t) = exp(−t²/2):

        EP = N ∫ |φ_N(t) − φ(t)|² w(t) dt,  w(t) = exp(−t²/2),

    integrated over [−t_max, t_max] by the trapezoidal rule on ``knots`` points of [0, t_max],
    doubled (|φ_N − φ|² is even in t), as the reference. Returns the mean over slices: 0 only when
    every projection looks standard normal, so minimising it pushes the embeddings towards an
    isotropic Gaussian, which LeJEPA shows is the optimal embedding law and which rules out collapse.
    Differentiable; per process (the reference all-reduces φ_N across GPUs).
    """
    x = x.float()
    n, d = x.shape
    if directions is None:
        directions = torch.randn(d, num_slices, generator=generator, device="cpu").to(x.device)
        directions = directions / directions.norm(dim=0, keepdim=True)
    t = torch.linspace(0.0, t_max, knots, device=x.device, dtype=torch.float32)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, device=x.device)
    weights[[0, -1]] = dt  # trapezoid on [0, t_max], times 2 for the symmetric half
    phi = torch.exp(-t.square() / 2.0)
    xt = (x @ directions.to(x.dtype)).unsqueeze(-1) * t  # (N, M, K)
    err = (xt.cos().mean(0) - phi).square() + xt.sin().mean(0).square()  # |φ_N − φ|², (M, K)
    return ((err @ (weights * phi)) * n).mean()
