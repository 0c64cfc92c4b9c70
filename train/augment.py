"""Random rotation + inversion of a batch (positions, cell, forces, stress).

The generator is seeded from (seed, rank, step), so the augmentation needs no
saved state for an exact resume.
"""

from __future__ import annotations

import torch

from data_pipelines import schema as K


def random_orthogonal(
    num: int, generator: torch.Generator, inversion: bool = True, dtype=torch.float64
) -> torch.Tensor:
    """(num, 3, 3) Haar-random rotations, each inverted with probability 1/2."""
    a = torch.randn(num, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    q = q * det[:, None, None]  # proper rotations
    if inversion:
        flip = torch.randint(0, 2, (num,), generator=generator) * 2 - 1
        q = q * flip[:, None, None].to(q.dtype)
    return q.to(dtype)


def rotate_batch(batch: dict, rotations: torch.Tensor) -> dict:
    """A copy of the batch with structure s rotated by rotations[s] (x -> R x)."""
    out = dict(batch)
    rot = rotations.to(batch[K.POSITIONS].dtype)
    per_atom = rot[batch[K.BATCH]]
    out[K.POSITIONS] = torch.einsum("aij,aj->ai", per_atom, batch[K.POSITIONS])
    out[K.FORCES] = torch.einsum("aij,aj->ai", per_atom, batch[K.FORCES])
    out[K.CELL] = torch.einsum("sij,skj->ski", rot, batch[K.CELL])  # rows are vectors
    out[K.STRESS] = rot @ batch[K.STRESS] @ rot.transpose(1, 2)
    return out


def augment(batch: dict, seed: int, rank: int, step: int) -> dict:
    g = torch.Generator().manual_seed(hash((seed, rank, step, 17)) & 0x7FFFFFFFFFFFFFFF)
    return rotate_batch(batch, random_orthogonal(len(batch[K.NUM_ATOMS]), g))
