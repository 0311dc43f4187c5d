"""The full-softmax cross-entropy over every item ("SASRec+"), with both gradients and without a [P, V]
logits tensor: blocks of positions (and, optionally, slices of the catalogue with an online
log-sum-exp), buffers reused across steps (:class:`Workspace`), the fused C kernel on CPU where it is
built (:mod:`recsys.kernels.cpu_softmax_ce`), oneDNN's fp32 products and bf16 blocks elsewhere."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import cpu_softmax_ce, onednn

# fp32 full-CE logit blocks through oneDNN hold at most this many values (14 MB): 64 positions of
# Beauty's 54,542 items, 128 (the default ce_chunk_size) of ML-1M's 3,615
DNN_BLOCK_VALUES = 64 * 54_560


class Workspace:
    """Buffers that the full CE reuses from one training step to the next (logit blocks, bf16 copies of
    the item table): allocated once instead of every step. Fresh 7-28 MB blocks every step fragment the
    heap or, if handed back to the OS, cost a page fault per 4 KiB each step. Nothing in it outlives a
    forward pass."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-D buffer of ``numel`` values (contents undefined), reusing the one of that name if it fits."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


def _buffer(workspace: Workspace | None, name: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    if workspace is None:
        return torch.empty(numel, dtype=dtype, device=device)
    return workspace.get(name, numel, dtype, device)


def _block_logits(w: torch.Tensor, hc: torch.Tensor, buffer: torch.Tensor | None, dnn: bool) -> torch.Tensor:
    """[V, c] logits ``w @ hc.T``: a fresh block from oneDNN (``dnn``), else written into the front of ``buffer``."""
    if dnn:
        return onednn.mm(w, hc.T)
    return torch.mm(w, hc.T, out=buffer[: w.shape[0] * hc.shape[0]].view(w.shape[0], hc.shape[0]))


def _exp_column_sums(e: torch.Tensor, col_max: torch.Tensor | None) -> torch.Tensor:
    """``e`` [V, c] of logits replaced in place by ``exp(e - col_max)`` (no shift where ``col_max`` is
    None); returns the [c] fp32 column sums. A bf16 CPU block goes through the C kernels in one pass
    (fp32 sums of the unrounded exponentials); otherwise torch's exp and a reduction, bf16 for a bf16
    block (see :class:`ChunkedSoftmaxCE`)."""
    if e.dtype == torch.bfloat16 and e.device.type == "cpu" and e.is_contiguous() and cpu_softmax_ce.available():
        return cpu_softmax_ce.bf16_exp_column_sums(e, col_max)
    if col_max is not None:
        e.sub_(col_max)
    e.exp_()
    return e.sum(dim=0).float() if e.dtype == torch.bfloat16 else e.sum(dim=0)


# an unshifted block is kept when every column sum lies in [2^-60, 2^120): then no exponential
# overflowed, and those that underflowed (< 2^-126 each) add up to < V 2^-66 of their column's sum
_SMALLEST_SUM = 2.0**-60


def _cpu_kernel_usable(hidden: torch.Tensor, table: torch.Tensor) -> bool:
    """Whether the full CE can run in the fused C kernel: fp32 CPU operands, outside autocast,
    torch.compile and tracing (which need torch's own ops), the kernel built and checked."""
    if hidden.device.type != "cpu" or table.device.type != "cpu":
        return False
    if hidden.dtype != torch.float32 or table.dtype != torch.float32 or hidden.shape[0] == 0:
        return False
    if onednn._autocast_on() or onednn._compiling() or torch.jit.is_tracing():
        return False
    return cpu_softmax_ce.available()


def _sums_in_range(col_sum: torch.Tensor) -> bool:
    # below the C kernel's clamp (a sum that large may hold a clamped e^88: redone shifted, as an overflow)
    return bool(((col_sum >= _SMALLEST_SUM) & (col_sum < cpu_softmax_ce.BF16_EXP_LARGEST_SUM)).all())


class ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ items.T`` against ``targets``, in blocks of logits.

    A block is ``chunk`` positions x ``item_chunk`` items (item-major, [items, positions]: the faster
    GEMM layout on CPU); the whole [positions x items] matrix never exists. With ``item_chunk`` 0 a
    block spans the whole catalogue; otherwise the catalogue is walked in slices and each position's
    log-sum-exp is combined across slices online (``logaddexp`` of the running value and the slice's),
    so memory does not grow with the catalogue. With a whole-catalogue block and gradients wanted, the
    forward exponentiates each block in place, and as soon as its column sums are known accumulates
    both gradients right there: ``(softmax - onehot) / P`` is never formed, its per-position scale goes
    onto the small [c, D] GEMM operands and the onehot part is an index_add. Nothing is recomputed
    (3 GEMMs per block instead of 4) and the backward only scales the stored gradients. With catalogue
    slices the log-sum-exp is known only after the last slice: the forward keeps each position's
    log-sum-exp and target logit, and the backward recomputes each block's logits and turns them into
    ``softmax - onehot`` in place. Same value and gradients as ``F.cross_entropy(hidden @ items.T,
    targets)`` to float rounding (tested). ``compute_dtype=torch.bfloat16`` runs the three GEMMs in
    bf16 with fp32 accumulation (faster than fp32 through oneDNN on a CPU with bf16 units); the gradients are summed in fp32. The logit block stays bf16
    (a max-shift, where one is needed, subtracts two bf16 values); the exponentials are computed in
    fp32 and stored in bf16, the precision the gradient GEMMs read them in. On CPU, where the C kernels
    are built, that is one pass over the block (``cpu_softmax_ce.bf16_exp_column_sums``: exp, rounding
    and fp32 column sums of the unrounded exponentials);
    elsewhere torch's exp and a bf16 reduction for the sums (relative error measured <= 0.32% on a
    54,542-item block, the order of the bf16 exponentials' own rounding). Tested against fp32 CE
    of the bf16-rounded operands: loss within 0.2%, gradients within 2% of their max.

    fp32 on CPU, where the C kernels are built (``recsys.kernels.cpu_softmax_ce.softmax_ce``), the whole
    loss runs there instead: the same value and gradients to float rounding, faster than this path's
    oneDNN products, in three products where the exponentials of a group of positions fit in 48 MB
    (Beauty's catalogue: 192 positions at a time), else four (tested against both PyTorch paths).

    ``offset_rows``, ``offset_items``, ``offset`` (a repeat bias, :mod:`recsys.models.layers.repeat`): the
    scalar tensor ``offset`` is added to the logit of each (position, item) pair listed (rows sorted,
    pairs distinct), and gets its gradient. Such a loss runs the recomputing path (blocks of logits in the
    forward, again in the backward), where a few thousand sparse additions per block fit.
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        table,
        table_targets,
        chunk: int,
        compute_dtype=None,
        item_chunk: int = 0,
        workspace: Workspace | None = None,
        offset_rows: torch.Tensor | None = None,
        offset_items: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ):
        # row 0 of the table is padding, never a candidate: the softmax runs over items = table[1:]. The
        # gradient is written into a full-table tensor (row 0 stays zero), so autograd needs no
        # zero-filled [V + 1, D] copy for a slice's backward
        items, targets = table[1:], table_targets - 1
        P, V = hidden.shape[0], items.shape[0]
        offsets = offset_rows is not None
        if compute_dtype is None and not offsets and _cpu_kernel_usable(hidden, table):
            # the fused C kernel (recsys.kernels.cpu_softmax_ce.softmax_ce): loss and both gradients from
            # 48 x 96 tiles of logits in cache, at most 48 MB of exponentials kept
            want = any(ctx.needs_input_grad[:2])
            grad_table = torch.empty(table.shape, dtype=torch.float32) if want else None
            if want:
                grad_table[0] = 0.0  # the padding row; the kernel writes every other row
            losses_per_position, grad_hidden, _ = cpu_softmax_ce.softmax_ce(
                hidden, items, targets, want, grad_items_out=grad_table[1:] if want else None
            )
            ctx.fused, ctx.dtypes = True, (hidden.dtype, table.dtype)
            if want:
                ctx.save_for_backward(grad_hidden, grad_table)
            return losses_per_position.mean()
        item_chunk = item_chunk if 0 < item_chunk < V else V
        h = hidden.to(compute_dtype) if compute_dtype else hidden
        w = items
        if compute_dtype:  # the bf16 copy of the item table, in a reused buffer
            w = _buffer(workspace, "items_low", items.numel(), compute_dtype, items.device).view(items.shape)
            w.copy_(items)
        ctx.chunk, ctx.compute_dtype, ctx.item_chunk = chunk, compute_dtype, item_chunk
        if item_chunk == V and not offsets and any(ctx.needs_input_grad[:2]):  # one pass: loss and both gradients
            # the last block padded with zero rows (their columns are dropped) to a multiple of 64 positions
            # (16 on GPU; never past the chunk): its width takes one of chunk / 64 values, not any of
            # chunk. oneDNN compiles and caches a GEMM kernel per shape, and every new width grew the
            # process, while at most 63 padded positions per batch cost no measurable step time
            quantum = min(chunk, 64 if hidden.device.type == "cpu" else 16)
            rest = P % chunk
            P_pad = P - rest + (min(chunk, rest + (-rest) % quantum) if rest else 0)
            h = F.pad(h, (0, 0, 0, P_pad - P))
            targets = F.pad(targets, (0, P_pad - P))
            lse = torch.empty(P_pad, device=hidden.device, dtype=torch.float32)
            target_logits = torch.empty(P_pad, device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty((P_pad, hidden.shape[1]), device=hidden.device, dtype=torch.float32)
            grad_table = torch.zeros(table.shape, device=items.device, dtype=torch.float32)
            grad_items = grad_table[1:]  # [V, D] view
            # the [V, c] @ [c, D] gradient products land in a reused buffer before they are added up
            product = (
                _buffer(workspace, "grad_items_low", items.numel(), compute_dtype, items.device).view(items.shape)
                if compute_dtype
                else None
            )
            # |logit| <= |h| max|w|: when that bound is small, exp needs no max-shift (softmax does not
            # change with the shift), which saves two passes over every block; e^bound x V stays below
            # fp32's largest value and e^-bound above its smallest normal. Past the bound (soon in
            # training: a trained Beauty SASRec's bound was 621, its largest logit 14) a CPU block is
            # still exponentiated unshifted, and redone with its columns' maxima subtracted only when a
            # column sum came out outside [2^-60, 2^120) (_sums_in_range). CPU only: both checks sync.
            on_cpu = hidden.device.type == "cpu"
            bounded = on_cpu and (
                float(hidden.detach().norm(dim=1).max() * items.detach().norm(dim=1).max()) * 1.01 <= 80.0 - math.log(V)
            )
            # one [V, chunk] block buffer for the whole batch (a smaller last block is a contiguous view
            # of its front): a fresh block per chunk costs page faults and leaves the heap fragmented.
            # bf16: the block stays bf16 end to end (exp computed in fp32, stored in bf16, which is what
            # the gradient GEMMs read anyway; column sums as below); a max-shift subtracts two bf16 values
            # (exact near the max, where the exponentials that matter are)
            low = _buffer(workspace, "block_low", V * chunk, compute_dtype, hidden.device) if compute_dtype else None
            # fp32 on CPU: the three GEMMs through oneDNN (recsys.kernels.onednn: faster than torch.mm),
            # which writes each [V, c] block itself (no out=), so there is no block buffer to reuse. Its
            # blocks hold at most DNN_BLOCK_VALUES logits (64 positions of Beauty's 54,542 items):
            # oneDNN allocates outputs and scratch space per call, and larger blocks raised a Beauty
            # training process's peak memory more than they shortened its step
            dnn_chunk = max(16, DNN_BLOCK_VALUES // V // 16 * 16)
            dnn = low is None and onednn.usable(w, V * min(chunk, dnn_chunk))
            if dnn:
                chunk = min(chunk, dnn_chunk)
            block = (
                None if low is not None or dnn else _buffer(workspace, "block", V * chunk, torch.float32, hidden.device)
            )
            logits_buffer = low if low is not None else block  # None with oneDNN (fresh blocks)
            # bf16 blocks: the target logits from the bf16-rounded operands in fp32 (what the GEMM adds up,
            # before its output is rounded), and the item table transposed once: [D, V] @ [V, c] is the
            # fastest layout for the hidden-state gradient on CPU (faster than [V, c].T @ [V, D])
            if low is not None or dnn:
                w_t = _buffer(workspace, "items_t", w.numel(), w.dtype, w.device).view(w.shape[1], V)
                w_t.copy_(w.T)  # [D, V]
            if low is not None:
                target_logits = (h.float() * w[targets].float()).sum(1)
            for start in range(0, P, chunk):
                hc, tc = h[start : start + chunk], targets[start : start + chunk]
                c = hc.shape[0]
                n = min(c, P - start)  # real positions in this block (c - n padding rows at the end)
                rows, cols = slice(start, start + c), torch.arange(c, device=hidden.device)
                # E = exp(logits - shift) in place; (softmax - onehot) / P = E * scale - onehot / P with a
                # per-position scale, which goes onto the small [c, D] operands of the gradient GEMMs
                # instead of a pass over the block (the [V, c] elementwise work costs as much as the GEMMs)
                e = _block_logits(w, hc, logits_buffer, dnn)  # [V, c], bf16 or fp32
                if low is None:
                    target_logits[rows] = e[tc, cols]
                col_max = None if on_cpu else e.amax(dim=0)  # CPU: shifted only if redone below; GPU: always
                col_sum = _exp_column_sums(e, col_max)
                if not bounded and col_max is None and not _sums_in_range(col_sum):  # redo it shifted
                    e = _block_logits(w, hc, logits_buffer, dnn)
                    col_max = e.amax(dim=0)
                    col_sum = _exp_column_sums(e, col_max)
                lse[rows] = col_sum.log() if col_max is None else col_max.float() + col_sum.log()
                scale = (1.0 / (col_sum * P))[:, None]  # [c, 1]; padded rows of hc are zero: no gradient
                if dnn:  # [D, V] @ [V, c] by oneDNN (its fast layout); the item gradient accumulates in
                    # place (addmm_): oneDNN's fresh [V, D] product plus an addition per block cost more
                    # memory and time
                    torch.mul(onednn.mm(w_t, e).T, scale, out=grad_hidden[rows])
                    grad_items.addmm_(e, hc * scale)
                elif e.dtype == torch.float32:
                    torch.mm(e.T, w, out=grad_hidden[rows]).mul_(scale)
                    grad_items.addmm_(e, hc * scale)
                else:
                    grad_hidden[rows] = (w_t @ e).T.float().mul_(scale)
                    grad_items += torch.mm(e, (hc.float() * scale).to(e.dtype), out=product)
                # the onehot part: -items[target] / P for each position, -hidden / P for each target item
                real = slice(start, start + n)
                grad_hidden[real] -= items[tc[:n]].float() / P
                grad_items.index_add_(0, tc[:n], hidden[real].float(), alpha=-1.0 / P)
            ctx.save_for_backward(grad_hidden[:P], grad_table)
            ctx.fused, ctx.dtypes = True, (hidden.dtype, table.dtype)
            return (lse[:P] - target_logits[:P]).mean()
        ctx.fused = False
        lse = torch.full((P,), float("-inf"), device=hidden.device, dtype=torch.float32)
        target_logits = torch.empty(P, device=hidden.device, dtype=torch.float32)
        pairs = _OffsetPairs(offset_rows, offset_items, offset, P, chunk)
        for start in range(0, P, chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            cols = torch.arange(hc.shape[0], device=hidden.device)
            for first in range(0, V, item_chunk):
                logits = (w[first : first + item_chunk] @ hc.T).float()  # [v, c]
                pairs.add_to(logits, start, first)
                block_lse = torch.logsumexp(logits, dim=0)
                lse[start : start + chunk] = torch.logaddexp(lse[start : start + chunk], block_lse)
                inside = (tc >= first) & (tc < first + logits.shape[0])  # targets in this slice
                target_logits[start : start + chunk][inside] = logits[tc[inside] - first, cols[inside]]
        ctx.save_for_backward(hidden, table, table_targets, lse)
        ctx.pairs = pairs
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.fused:  # scaled in place: a second backward through this graph fails on the version check
            grad_hidden, grad_items = ctx.saved_tensors
            if grad_out.device.type != "cpu" or grad_out.numel() != 1 or float(grad_out) != 1.0:
                grad_hidden, grad_items = grad_hidden.mul_(grad_out), grad_items.mul_(grad_out)
            # else loss.backward() itself: the stored gradients are the answer (no pass over [V, D]),
            # still correct for a later backward through a retained graph
            return grad_hidden.to(ctx.dtypes[0]), grad_items.to(ctx.dtypes[1]), *[None] * 8
        hidden, table, table_targets, lse = ctx.saved_tensors
        pairs = ctx.pairs
        items, targets = table[1:], table_targets - 1
        P, V = hidden.shape[0], items.shape[0]
        chunk, dtype, item_chunk = ctx.chunk, ctx.compute_dtype, ctx.item_chunk
        h = hidden.to(dtype) if dtype else hidden
        w = items.to(dtype) if dtype else items
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
        grad_table = torch.zeros(table.shape, device=items.device, dtype=torch.float32)
        grad_items = grad_table[1:]
        scale = grad_out / P
        for start in range(0, P, chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            cols = torch.arange(hc.shape[0], device=hidden.device)
            for first in range(0, V, item_chunk):
                wv = w[first : first + item_chunk]
                g = (wv @ hc.T).float()  # [v, c] logits, recomputed
                pairs.add_to(g, start, first)
                g.sub_(lse[None, start : start + chunk]).exp_()  # softmax
                inside = (tc >= first) & (tc < first + g.shape[0])
                g[tc[inside] - first, cols[inside]] -= 1.0
                pairs.gather_gradient(g, start, first)  # before the scale: that is applied once, below
                g.mul_(scale)
                gc = g.to(dtype) if dtype else g
                grad_hidden[start : start + chunk] += (gc.T @ wv).float()
                grad_items[first : first + item_chunk] += (gc @ hc).float()
        grad_offset = None if pairs.offset is None else (pairs.grad * scale).to(pairs.offset.dtype).reshape(())
        return grad_hidden.to(hidden.dtype), grad_table.to(table.dtype), *[None] * 7, grad_offset


class _OffsetPairs:
    """The (position, item) pairs whose logits get ``offset`` (see :class:`ChunkedSoftmaxCE`): each block
    of positions finds its pairs by a binary search in the sorted rows; nothing when there are none."""

    def __init__(self, rows, items, offset, P: int, chunk: int):
        self.offset = offset
        if rows is None:
            return
        self.rows, self.items = rows, items - 1  # item ids -> rows of the softmax (padding excluded)
        self.value = float(offset.detach())
        self.bounds = torch.searchsorted(rows, torch.arange(0, P + chunk, chunk, device=rows.device)).tolist()
        self.chunk = chunk
        self.grad = torch.zeros((), dtype=torch.float64, device=rows.device)

    def _block(self, logits: torch.Tensor, start: int, first: int):
        b = start // self.chunk
        rows = self.rows[self.bounds[b] : self.bounds[b + 1]] - start
        items = self.items[self.bounds[b] : self.bounds[b + 1]] - first
        inside = (items >= 0) & (items < logits.shape[0])  # this slice of the catalogue
        return items[inside], rows[inside]

    def add_to(self, logits: torch.Tensor, start: int, first: int) -> None:
        """``logits`` [v, c]: the block of positions ``start ..`` x items ``first ..``."""
        if self.offset is not None:
            logits[self._block(logits, start, first)] += self.value

    def gather_gradient(self, grad_logits: torch.Tensor, start: int, first: int) -> None:
        """The offset's gradient: the sum of the logits' gradients at its pairs."""
        if self.offset is not None:
            self.grad += grad_logits[self._block(grad_logits, start, first)].double().sum()


def full_softmax_ce(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 128,
    compute_dtype: torch.dtype | None = None,
    item_chunk: int = 0,
    workspace: Workspace | None = None,
    offset_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over all real items: hidden [P, D], items [V, D] (row 0 = padding, excluded), targets [P].
    ``item_chunk`` > 0 walks the catalogue in slices of that many items (online log-sum-exp); ``workspace``
    keeps the large buffers from one call to the next (a training loop passes the same one every step).
    ``offset_pairs`` (rows [K] sorted, item ids [K]) and the scalar ``offset``: added to those logits."""
    rows, pair_items = offset_pairs if offset_pairs is not None else (None, None)
    return ChunkedSoftmaxCE.apply(
        hidden, items, targets, chunk, compute_dtype, item_chunk, workspace, rows, pair_items, offset
    )
