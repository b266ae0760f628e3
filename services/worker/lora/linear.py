"""Per-row LoRA / DoRA / bias on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2, PEFT's fan_in_fan_out).

For row b with adapter slot s (local stack row ``l``)::

    y_b = scale[l] * (base(x_b) + (x_b @ A[l]) @ B[l]) + shift[l]    # A[l]: lora_A.T [in, r], B[l]: lora_B.T [r, out]

with, per adapter (``scaling`` = alpha/r or alpha/sqrt(r), ``b0`` = base bias, ``b1`` = the adapter's bias or b0),
B[l] = scaling * lora_B.T and:

    plain LoRA:  scale = 1                                 shift = b1 - b0
    DoRA:        scale = s = m / ||W + scaling*B@A||_row   shift = b1 - s*b0

DoRA as PEFT's ``DoraLinearLayer.forward`` computes it: ``base + (s - 1) * (base - bias) + s * scaling * B(A(x))``
where ``base`` already carries the (possibly adapter-replaced) bias and the norm is of the base weight alone
(never its bias), detached, i.e. a constant per adapter that we precompute at install. Rows without an adapter
(or whose adapter does not touch this module) hit local row 0: A = B = 0, scale = 1, shift = 0.

The low-rank term is computed by one of these routes (no loop over adapters):

* where the native kernel is loaded (:mod:`.native`, float32 on a CPU): one call for the whole batch, whatever its
  tokens per row and however many adapters it mixes, decode rows, prefill rows and a fused step's mix alike. Each
  row's A and B are read from the stacks where they lie, nothing gathered or padded, a run of one row's tokens a few
  at a time. It also beats torch's two skinny matmuls when every row is on one adapter (rank 16 on the 56M Llama,
  the 56 modules' terms: 1.8 against 2.8 ms for 32 decode rows, 57 against 93 ms for 2,048 prefill tokens);
* every row on one adapter: two plain matmuls on that slot's tensors (views, no gather);
* otherwise, a fused step (per-token rows) part by part (:class:`.plan.Part`);
* otherwise, few tokens per row (decode): a ``bmm`` over views of the stacks where the rows' adapters sit together in
  the stack (:class:`.plan.Grouped`), else ``embedding_bag`` with per-sample weights gathers each row's A and B rows
  and multiplies in one pass, never materialising per-row copies of the weights;
* otherwise, many tokens per row (prefill): per-row A and B gathered once (``index_select``) and applied with
  ``bmm``, the gather amortised over the row's tokens.

On a plain ``nn.Linear`` / ``Conv1D`` the base GEMM then accumulates into that term (``addmm_``), so the layer's
output is written once instead of written and re-read to add the term: on a CPU the extra pass over a prefill's
[batch, tokens, out] output costs more than the low-rank matmuls themselves. Other module types (e.g. quantised
Linear subclasses) run their own forward and the term is added to its output in place. DoRA's scale and any shift
are applied last, in place.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adapterfleet.common.errors import Incompatible

from . import few_rows, packed
from .base import SlotWrapper, module_tensor, optional_module_tensor
from .context import RowContext
from .native import LowRankKernel
from .plan import Grouped, Part, RowPlan
from .slot_stack import Entry, Field, Scaled, SlotStack, Transposed
from .weights import ModuleLora

try:  # transformers' GPT-2 style linear layer: weight [in, out], y = x @ W + b
    from transformers.pytorch_utils import Conv1D

    _CONV1D: tuple[type[nn.Module], ...] = (Conv1D,)
except ImportError:  # pragma: no cover
    _CONV1D = ()

BAG_TOKENS = 4  # rows of at most this many tokens take the embedding_bag route
_PLAIN = (nn.Linear, *_CONV1D)  # exact types whose forward is x @ W (+ b)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, _CONV1D):
        weight = module_tensor(module, "weight")  # [in, out]
        return weight.shape[0], weight.shape[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, *_CONV1D))


class LoraLinear(SlotWrapper):
    FIELDS: ClassVar[dict[str, Field]] = {
        "A": Field(0.0, rank_dim=1),  # entry [in, r] (lora_A transposed)
        "B": Field(0.0, rank_dim=0),  # entry [r, out] (lora_B transposed), scaling folded in
        "scale": Field(1.0),  # entry [out]; DoRA only
        "shift": Field(0.0),  # entry [out]; bias replacement (and DoRA's rescaled base bias)
    }

    def __init__(self, base_layer: nn.Module, ctx: RowContext):
        super().__init__(base_layer, ctx)
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self._pack: packed.Packed | None = None  # see _packed
        self._kernel_memo: tuple[torch.Tensor, torch.Tensor, LowRankKernel, bool] | None = None  # _kernel_takes

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight as it stores it: nn.Linear [out, in], Conv1D [in, out]."""
        return module_tensor(self.base_layer, "weight")

    @property
    def bias(self) -> torch.Tensor | None:
        return optional_module_tensor(self.base_layer, "bias")

    def base_weight(self) -> torch.Tensor:
        """The base weight as [out, in]."""
        w = self.weight
        return w.T if self.fan_in_fan_out else w

    def prepare(self, m: ModuleLora) -> tuple[dict[str, Entry | None], int]:
        """Per-slot stack entries for one adapter's change to this module (computed in float32)."""
        a, b = m.lora_A, m.lora_B
        param = self.base()._parameters.get("weight")  # noqa: SLF001 - a Linear's / Conv1D's, without __getattr__
        w = self.weight if param is None else param
        if (m.rank and m.magnitude is None and m.bias is None and a is not None and b is not None
                and w.dtype == a.dtype == b.dtype == torch.float32 and w.device == a.device == b.device):
            # the common case, float32 LoRA only: A and B transposed, and B scaled, as the stack writes their rows; no
            # copy or torch call here and no grad mode to enter (a cold load prepares every module of its adapter)
            return {"A": Transposed(a), "B": Transposed(b, m.scaling)}, m.rank
        return self._prepare(m)

    @torch.no_grad()
    def _prepare(self, m: ModuleLora) -> tuple[dict[str, Entry | None], int]:
        w = self.weight
        dtype, device = w.dtype, w.device
        b0 = self.bias
        entries: dict[str, Entry | None] = {}
        s = None
        if m.rank:
            assert m.lora_A is not None and m.lora_B is not None, "a rank comes with lora_A and lora_B (weights)"
            a = m.lora_A.to(device=device, dtype=torch.float32)  # [r, in]
            b = m.lora_B.to(device=device, dtype=torch.float32)  # [out, r]
            if m.magnitude is not None:
                w32 = self.base_weight().to(torch.float32)  # [out, in]
                norm = torch.linalg.norm(w32 + m.scaling * (b @ a), dim=1)  # [out]
                s = m.magnitude.to(device=device, dtype=torch.float32) / norm  # [out]
                entries["scale"] = s.to(dtype)
            # transposed views (copies only where the dtype changes): the slot stack copies them into its row, and
            # in float32 scales B on the way in (the same float32 product, without a scaled temporary)
            entries["A"] = a.T.to(dtype)
            entries["B"] = Scaled(b.T, m.scaling) if dtype == torch.float32 else (b * m.scaling).T.to(dtype)
        if m.bias is not None or (s is not None and b0 is not None):
            if b0 is None:  # then m.bias is set: a DoRA scale alone needs b0 to get here
                raise Incompatible(
                    f"adapter carries a bias for {m.path} but the base model's module has none; was it trained on "
                    "a different base model?"
                )
            b0_32 = b0.to(torch.float32)
            b1 = m.bias.to(device=device, dtype=torch.float32) if m.bias is not None else b0_32
            entries["shift"] = (b1 - (b0_32 if s is None else s * b0_32)).to(dtype)
        return entries, m.rank

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (y := self._per_token(x, *args, **kwargs)) is not None:  # a fused step: each token is a row
            return y
        stack = self._stack  # read once: add/remove swap it whole
        batch = x.shape[0]
        plan = self._plan(stack, batch, x.device)
        base = self.base()
        weight = None if args or kwargs else self._plain_weight(base, x)
        if plan is None:
            return base(x, *args, **kwargs) if weight is None else self._base_linear(base, weight, x)
        carried = plan.carried
        shape = (*x.shape[:-1], self.out_features)
        if "A" in carried and weight is not None and x.dtype == stack.tensor("A").dtype:
            flat = self._plain_terms(base, weight, x, stack, plan)  # [batch * tokens, out]
            if "scale" not in carried and "shift" not in carried:
                return flat.view(shape)
            out = flat.view(batch, -1, self.out_features)  # [batch, tokens, out]
        else:
            y = base(x, *args, **kwargs)
            shape = y.shape
            out = y.reshape(batch, -1, self.out_features)  # [batch, tokens, out]; the base layer's fresh output
            if "A" in carried:
                x2, tokens = x.reshape(-1, self.in_features), out.shape[1]
                a, b = stack.tensor("A"), stack.tensor("B")
                if a.dtype == out.dtype:
                    self._low_rank(x2.to(a.dtype), tokens, a, b, plan, into=out.view(-1, self.out_features))
                else:
                    out.add_(self._low_rank(x2.to(a.dtype), tokens, a, b, plan).view(out.shape).to(out.dtype))
        if "scale" in carried:  # DoRA
            out.mul_(_per_row(stack.tensor("scale"), plan))
        if "shift" in carried:
            out.add_(_per_row(stack.tensor("shift"), plan))
        return out.reshape(shape)

    def _plain_terms(self, base: nn.Module, weight: torch.Tensor, x: torch.Tensor, stack: SlotStack,
                     plan: RowPlan) -> torch.Tensor:
        """The base GEMM and the low-rank terms, run by this wrapper: the base layer's output, written once.
        x [batch, tokens, in] -> [batch * tokens, out]"""
        x2 = x.reshape(-1, self.in_features)
        tokens = x2.shape[0] // x.shape[0]
        a, b = stack.tensor("A"), stack.tensor("B")
        pack = self._packed(base, weight)
        y = None if pack is None else pack.linear(x2)
        if y is not None:  # the prepacked GEMM (and bias), then the terms added in place
            return self._low_rank(x2, tokens, a, b, plan, into=y)
        flat = self._low_rank(x2, tokens, a, b, plan)
        bias = self.bias
        if bias is not None:
            flat.add_(bias)
        if few_rows.few_rows(x2):  # a decode step: the transposed GEMM, then one small add
            return flat.add_(few_rows.linear_t(x2, self.base_weight()))
        return flat.addmm_(x2, weight if self.fan_in_fan_out else weight.t())  # nn.Linear [out, in], Conv1D [in, out]

    def _kernel_takes(self, kernel: LowRankKernel, a: torch.Tensor, b: torch.Tensor) -> bool:
        """:meth:`.native.LowRankKernel.takes_stacks`, worked out once per stack (a stack's tensors are the same
        objects for as long as it is installed) and kernel: 56 wrappers a forward ask."""
        memo = self._kernel_memo
        if memo is None or memo[0] is not a or memo[1] is not b or memo[2] is not kernel:
            memo = (a, b, kernel, kernel.takes_stacks(a, b))
            self.__dict__["_kernel_memo"] = memo  # a plain attribute, not a registered one
        return memo[3]

    def _base_linear(self, base: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The plain base layer's ``x @ W.T + b``: prepacked where :mod:`.packed` packed it, else few-row aware."""
        pack = self._packed(base, weight)
        y = None if pack is None else pack.linear(x)
        return few_rows.linear(x, self.base_weight(), self.bias) if y is None else y

    @staticmethod
    def _plain_weight(base: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The base layer's weight where this wrapper may run its GEMM itself: a plain Linear / Conv1D, the dtype of
        ``x``, no autocast (which would run the base layer in another dtype); else None."""
        if type(base) not in _PLAIN:
            return None
        weight = base._parameters.get("weight")  # noqa: SLF001 - a Linear's / Conv1D's, without __getattr__
        if weight is None or x.dtype != weight.dtype or torch.is_autocast_enabled(x.device.type):
            return None
        return weight

    def _packed(self, base: nn.Module, weight: torch.Tensor) -> packed.Packed | None:
        """:func:`.packed.of` the base layer, kept while the layer holds the weight it was packed from (a
        weak-keyed lookup costs microseconds, and every forward of every wrapper asks)."""
        pack = self._pack
        if pack is None or pack.source is not weight:
            pack = packed.of(base)
            self.__dict__["_pack"] = pack  # a plain attribute, not a registered one (nn.Module's __setattr__)
        return pack

    def _low_rank(self, x2: torch.Tensor, tokens: int, a: torch.Tensor, b: torch.Tensor, plan: RowPlan,
                  into: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's ``(xs[b] @ a[l_b]) @ b[l_b]``, added in place to ``into`` if given, else a new tensor.

        x2 [batch * tokens, in] -> [batch * tokens, out]
        """
        rank = a.shape[-1]
        kernel = self.ctx.low_rank
        if kernel is not None and kernel.takes_rows(x2, into) and self._kernel_takes(kernel, a, b):
            # the native kernel (lora/native.py), any tokens, one adapter or many: where it is loaded it beats every
            # other route (see the module's docstring)
            out = into if into is not None else x2.new_zeros(x2.shape[0], self.out_features)
            return kernel.add_rows(x2, a, b, plan.items(tokens), out)
        if plan.single is not None:
            h = x2 @ a[plan.single]  # [batch * tokens, rank]
            return h @ b[plan.single] if into is None else into.addmm_(h, b[plan.single])
        if plan.parts is not None:
            return self._by_parts(x2, a, b, plan.parts, into)
        if tokens <= BAG_TOKENS:
            grouped = plan.grouped(tokens)
            if grouped is not None:
                return self._grouped(x2, a, b, grouped, into)
            index, offsets = plan.bags(tokens, self.in_features)
            h = F.embedding_bag(  # [batch * tokens, rank]
                index, a.view(-1, rank), offsets, mode="sum", per_sample_weights=x2.reshape(-1)
            )
            index, offsets = plan.bags(tokens, rank)
            delta = F.embedding_bag(  # [batch * tokens, out]
                index, b.view(-1, self.out_features), offsets, mode="sum", per_sample_weights=h.reshape(-1)
            )
            return delta if into is None else into.add_(delta)
        h = torch.bmm(x2.reshape(-1, tokens, self.in_features), a.index_select(0, plan.local))  # [batch, tokens, rank]
        b_rows = b.index_select(0, plan.local)  # [batch, rank, out]
        if into is None:
            return torch.bmm(h, b_rows).view(-1, self.out_features)
        return into.view(h.shape[0], tokens, -1).baddbmm_(h, b_rows)

    def _by_parts(self, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, parts: list[Part],
                  into: torch.Tensor | None) -> torch.Tensor:
        """A fused step's low-rank terms part by part (:class:`.plan.Part`): x2 [items, in] -> [items, out]."""
        out = into if into is not None else x2.new_zeros(x2.shape[0], self.out_features)
        for p in parts:
            if p.plan is not None:
                self._low_rank(x2[p.start:p.end], 1, a, b, p.plan, into=out[p.start:p.end])
            elif p.row:
                out[p.start:p.end].addmm_(x2[p.start:p.end] @ a[p.row], b[p.row])
        return out

    def _grouped(self, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g: Grouped,
                 into: torch.Tensor | None) -> torch.Tensor:
        """The low-rank term of few-token rows laid out by stack row (:class:`.plan.Grouped`): x2 [items, in] ->
        [items, out], added in place to ``into`` if given."""
        a_rows, b_rows = a.narrow(0, g.lo, g.span), b.narrow(0, g.lo, g.span)  # views: nothing gathered
        out_features = self.out_features
        if g.identity:
            h = torch.bmm(x2.view(g.span, 1, -1), a_rows)  # [span, 1, rank]
            if into is None:
                return torch.bmm(h, b_rows).view(-1, out_features)
            into.view(g.span, 1, out_features).baddbmm_(h, b_rows)
            return into
        xp = x2.new_zeros(g.span * g.per, x2.shape[1])
        xp.index_copy_(0, g.pos, x2 if g.used is None else x2.index_select(0, g.used))
        h = torch.bmm(xp.view(g.span, g.per, -1), a_rows)  # [span, per, rank]
        delta = torch.bmm(h, b_rows).view(-1, out_features).index_select(0, g.pos)  # [used items, out]
        if g.used is None:
            return delta if into is None else into.add_(delta)
        if into is None:
            into = x2.new_zeros(x2.shape[0], out_features)
        return into.index_add_(0, g.used, delta)


def _per_row(t: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """Each row's entry of a [L + 1, out] field, broadcastable to [batch, tokens, out]."""
    if plan.single is not None:
        return t[plan.single]  # [out], a view
    return t.index_select(0, plan.local).unsqueeze(1)  # [batch, 1, out]
