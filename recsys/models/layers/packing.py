"""Packing: the real (non-padding) positions of a left-padded batch as rows of one [T, F] tensor, so
that blocks compute no padding; and the grid layout (each row's items first) that export and short
batches use instead."""

from __future__ import annotations

import torch


def exporting() -> bool:
    """Whether ``torch.export`` is tracing: the encoders then take their branch-free paths (the grid
    layout with a key mask, plain attention), whose shapes do not depend on the data."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def bucket_size(n: int) -> int:
    """``n`` rounded up to one of 8 sizes per power of two (at most 12.5% more, ~6% on average)."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)  # n in [8 step, 16 step)
    return -(-n // step) * step


class Packing:
    """The real (non-padding) positions of a left-padded [B, L] batch, in row-major order.

    Blocks work on the packed [T, F] rows: every linear layer, LayerNorm, GELU and dropout then costs
    T rows instead of B x L (on Beauty's training batches about 1 in 9 positions is real). Only the
    attention scatters its queries, keys and values into a [B, L] grid, and there each row's items sit
    at the front (right padding): a real query's earlier keys are then all real, so causal attention
    needs no mask at all (SDPA's ``is_causal``, which also skips the masked half of the work), and
    bidirectional attention only a [B, 1, 1, L] key mask. T is rounded up to :func:`bucket_size` with
    copies of a real row that nothing reads: oneDNN compiles and caches a kernel per shape (GELU runs
    there), and a new T every step grew the process by ~1 MB per step."""

    def __init__(self, not_pad: torch.Tensor):
        B, L = not_pad.shape[:2]
        self.batch, self.length = B, L
        flat = not_pad.reshape(B * L)
        self.index = flat.nonzero().squeeze(1)  # [T] into the flattened left-padded [B * L]
        self.num_real = T = self.index.numel()
        self.full = T == B * L  # no padding (e.g. evaluation blocks of long histories): packing is a view
        self.counts = counts = not_pad.reshape(B, L).sum(1)  # [B] items per row
        # the same positions in the attention grid, where row b's items take columns 0 .. counts[b] - 1
        self.grid_index = self.index - (L - counts)[self.index // L]  # [T]
        self.rows, self.grid_rows = self.index, self.grid_index  # [T_bucket]: the real rows, then copies
        extra = 0 if self.full else bucket_size(T) - T
        if extra:
            self.rows = torch.cat([self.index, self.index[-1:].expand(extra)])
            self.grid_rows = torch.cat([self.grid_index, self.grid_index[-1:].expand(extra)])
        # each row's last position (always real for a non-empty row) in the packed rows
        self.last = (counts.cumsum(0) - 1).clamp_min(0)  # [B]
        self.nonempty = (counts > 0)[:, None]  # [B, 1]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # left-padded [B, L, F] -> [T_bucket, F]
        if self.full:
            return x.reshape(self.batch * self.length, -1)
        return x.reshape(self.batch * self.length, -1).index_select(0, self.rows)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> left-padded [B, L, F], zeros at padding
        if self.full:
            return x.view(self.batch, self.length, -1)
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.index, x[: self.num_real]).view(self.batch, self.length, -1)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, L, F], items first, zeros after
        if self.full:
            return x.view(self.batch, self.length, -1)
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.grid_index, x[: self.num_real]).view(self.batch, self.length, -1)

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:  # [B, L, F] (grid) -> [T_bucket, F]
        if self.full:
            return y.reshape(self.batch * self.length, -1)
        return y.reshape(self.batch * self.length, -1).index_select(0, self.grid_rows)

    def key_mask(self) -> torch.Tensor | None:
        """[B, 1, 1, L] bool, True = a real key (None without padding); an empty row keeps key 0, so
        no softmax row is empty (SDPA would return NaN there)."""
        if self.full:
            return None
        columns = torch.arange(self.length, device=self.counts.device)
        return ((columns < self.counts[:, None]) | (columns == 0))[:, None, None, :]

    def last_rows(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, F], zeros for an empty row
        if self.num_real == 0:
            return x.new_zeros(self.batch, x.shape[-1])
        return x.index_select(0, self.last) * self.nonempty


class GridRows(Packing):
    """A batch given in the attention grid's layout (each row's items first, padding after) and computed
    row for row, padding included: nothing is gathered into packed rows or scattered back. For dense
    batches (an evaluation block of users with similar history lengths) that costs less than packing;
    the padding rows are computed and never read (a real query's keys are all real: earlier positions
    under causal attention, the key mask otherwise), so every real position is exactly as packed."""

    def __init__(self, not_pad: torch.Tensor):  # [B, L, 1] in grid layout
        B, L = not_pad.shape[:2]
        self.batch, self.length = B, L
        self.counts = not_pad.reshape(B, L).sum(1)  # [B]
        self.num_real = B * L  # every position is a row
        self.full = False if exporting() else bool((self.counts == L).all())  # (exported: always the key mask)
        self.last = torch.arange(B, device=not_pad.device) * L + (self.counts - 1).clamp_min(0)  # [B]
        self.nonempty = (self.counts > 0)[:, None]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # grid [B, L, F] -> [B L, F]
        return x.reshape(self.batch * self.length, -1)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.batch, self.length, -1)

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(self.batch * self.length, -1)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:  # [B L, F] (grid) -> left-padded [B, L, F]
        B, L = self.batch, self.length
        columns = torch.arange(L, device=x.device)
        real = columns < self.counts[:, None]  # [B, L]
        left = (torch.arange(B, device=x.device)[:, None] * L + (L - self.counts)[:, None] + columns)[real]
        out = x.new_zeros(B * L, x.shape[-1])
        return out.index_copy_(0, left, x.view(B, L, -1)[real]).view(B, L, -1)


def items_first_order(not_pad: torch.Tensor) -> torch.Tensor:
    """[B, L] column order that moves each left-padded row's items to the front (``tensor.gather(1,
    order)``); the padding columns follow."""
    B, L = not_pad.shape[:2]
    counts = not_pad.reshape(B, L).sum(1)
    return (torch.arange(L, device=not_pad.device) + (L - counts)[:, None]) % L


# at least this share of real positions in a last-position batch: compute it in the grid layout
# (GridRows) instead of packing: with little padding to skip, packing costs more than it saves
GRID_MIN_REAL_SHARE = 0.75


def grid_inputs(last_only: bool, not_pad: torch.Tensor, *per_position: torch.Tensor) -> tuple:
    """(grid, not_pad, *per_position): a dense last-position batch (evaluation) reordered items-first,
    so that :func:`run_blocks` computes it in the grid layout (no hidden state packed or scattered);
    any other batch unchanged, with grid False. per_position: [B, L] tensors (ids, positions)."""
    if not (last_only and (exporting() or bool(not_pad.sum() >= GRID_MIN_REAL_SHARE * not_pad.numel()))):
        return (False, not_pad, *per_position)
    order = items_first_order(not_pad)
    return (True, not_pad.gather(1, order[..., None]), *(t.gather(1, order) for t in per_position))
