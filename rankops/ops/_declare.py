"""One declaration per op: the pair of torch custom ops, their fakes, the autograd formula and the
direct-call path, from what is particular to the op.

A family states its op once::

    def _fm_backward(grad: Tensor, x: Tensor, reduce: bool) -> Tensor: ...

    @_declare.op("fm_interaction", impls=_impls, grads=("x",),
                 fake=lambda x, reduce: x.new_empty(x.shape[0], 1 if reduce else x.shape[2]),
                 backward=_fm_backward, backward_fake=lambda grad, x, reduce: _declare.like(x))
    def _fm(x: Tensor, reduce: bool) -> Tensor: ...

and gets ``torch.ops.rankops.fm_interaction`` and ``torch.ops.rankops.fm_interaction_backward``.
The decorated function and ``backward`` are signatures only (their bodies never run): the custom
ops' schemas are inferred from them, and the fakes must take the same parameters (checked here, at
import). ``impls(name)`` gives ``{backend: "module:function"}`` for ``name`` and ``name + "_backward"``.

The autograd formula is bound by parameter name. The backward op's parameters are filled from the
forward's inputs and outputs of the same name (``outputs`` names the forward's results) and
``grad``, the gradient of the first output; the others are by-products (saved activations, a
log-sum-exp, an argmax) and get no gradient. Exactly what the backward names is saved: tensors with
``save_for_backward``, everything else on the context. The backward op returns the gradients of the
inputs named in ``grads``, in that order; inputs that need none get None.

The direct path: calling the declared op (``Op.__call__``) skips torch.library's dispatch in plain
eager work (``_dispatch.direct``): the kernel itself when autograd records nothing, else the same
formula as a plain ``autograd.Function``; the formula's call of the backward op is direct too.
torch.compile, torch.export, dispatch modes and torch.func transforms see the custom ops.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Collection, Sequence

import torch
from torch import Tensor

from rankops.ops import _dispatch


DECLARED: list["Op"] = []  # every declared op, for tracing_reference()
TRACING_REFERENCE = False  # set by tracing_reference(); read (and guarded on) by torch.compile
INLINE_REFERENCE = False  # set by inline_reference()


def _resolve_references() -> None:
    """Import every declared op's reference function (the two contexts below call them directly)."""
    for op in DECLARED:
        if op._reference_path and op._reference is None:
            op._reference = _dispatch._resolve(op._reference_path)


@contextlib.contextmanager
def tracing_reference():
    """The reference backend, and under torch.compile each declared op's reference traced through
    as plain PyTorch instead of kept as an opaque custom op: what ``torch.compile`` of the same
    model written without rankops would give (the baseline of bench/models.py)."""
    global TRACING_REFERENCE
    from rankops import backend

    _resolve_references()
    previous, TRACING_REFERENCE = TRACING_REFERENCE, True
    try:
        with backend.use_backend("reference"):
            yield
    finally:
        TRACING_REFERENCE = previous


@contextlib.contextmanager
def inline_reference():
    """Every declared op runs its reference's PyTorch code inline (autograd by torch), in eager
    mode too: a TorchDispatchMode (FlopCounterMode) then sees the matrix products inside the ops
    instead of one opaque custom op (bench/models.py counts a step's FLOPs so)."""
    global INLINE_REFERENCE
    _resolve_references()
    previous, INLINE_REFERENCE = INLINE_REFERENCE, True
    try:
        yield
    finally:
        INLINE_REFERENCE = previous


NATIVE = "torch.ops:rankops_C"  # the compiled extension's kernels: one schema, CPU and CUDA per dispatch key


def backends(package: str, cuda: bool | Collection[str] = False) -> Callable[[str], dict[str, str]]:
    """The usual ``impls`` of a family in ``package``: ``reference.py`` and ``triton.py`` functions and
    the extension's kernels (``cpp``; ``cuda`` too where the family has CUDA kernels: every op when
    ``cuda`` is True, else the forward ops it names, with their backwards), all named as the op."""

    def impls(name: str) -> dict[str, str]:
        found = {"reference": f"{package}.reference:{name}", "cpp": f"{NATIVE}.{name}"}
        if cuda is True or (cuda and name.removesuffix("_backward") in cuda):
            found["cuda"] = f"{NATIVE}.{name}"
        found["triton"] = f"{package}.triton:{name}"
        return found

    return impls


def like(t: Tensor) -> Tensor:
    """A contiguous empty tensor shaped as ``t``: the fake of a gradient of ``t``."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def contiguous(*args):
    """The default argument preparation: every tensor made contiguous (the kernels assume it)."""
    return tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)


def _params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _device(args) -> torch.device:
    return next(a.device for a in args if isinstance(a, Tensor))


def _custom_op(qualname: str, signature: Callable, kernel: Callable, fake: Callable):
    names = _params(signature)
    if _params(fake) != names:
        raise TypeError(f"{qualname}: the fake takes {_params(fake)} but the op takes {names}; they must match")
    schema = torch.library.infer_schema(signature, mutates_args=())

    def impl(*args, **kwargs):
        if kwargs:  # only a caller naming arguments pays for binding them
            args = inspect.signature(signature).bind(*args, **kwargs).args
        return kernel(*args)

    op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    op.impl = kernel  # for _dispatch.invoke's direct path
    return op


class Op:
    """A declared op: ``forward`` and ``backward`` are the two torch custom ops (CustomOpDef);
    calling the Op runs the forward by the direct path where that is allowed."""

    def __init__(
        self,
        name: str,
        signature: Callable,
        *,
        fake: Callable,
        backward: Callable,
        backward_fake: Callable,
        grads: Sequence[str],
        impls: Callable[[str], dict[str, str]] | None = None,
        kernel: Callable | None = None,
        backward_kernel: Callable | None = None,
        outputs: Sequence[str] = ("out",),
        family: str | None = None,
        prepare: Callable = contiguous,
        backward_prepare: Callable = contiguous,
        recompute: str | None = None,
        formula: Callable | None = None,
        keep: Sequence[str] = (),
    ):
        """
        Args:
            name: the op's name, ``torch.ops.rankops.<name>`` (and ``<name>_backward``).
            signature: the forward's schema-bearing signature.
            fake: the forward's shape function (same parameters).
            backward, backward_fake: the backward op's signature and shape function.
            grads: the inputs, by name, whose gradients the backward op returns, in its order.
            impls: ``impls(op_name) -> {backend: "module:function"}``, called for the forward's
                and the backward's names; the backend is chosen per call (``_dispatch.call``).
            kernel, backward_kernel: instead of impls, the op's whole implementation.
            outputs: the forward's results by name; all but the first are by-products.
            family: the op name backend selection and error messages use (default: the op's).
            prepare, backward_prepare: map the op's arguments to the implementation's (default:
                tensors made contiguous); where value checks that need real tensors go.
            recompute: a bool input that, when False, made the forward skip its by-products: the
                backward then reruns the forward with it True to get them.
            formula: ``formula(values, needs, run) -> {input: grad}`` replacing the default
                "run the backward op, map its results to ``grads``". ``values`` holds what was
                saved plus ``grad``; ``needs[name]`` is whether autograd wants that input's
                gradient; ``run(**extra)`` runs the backward op with ``extra`` added to values.
            keep: inputs the formula reads beyond those the backward op takes.
        """
        self.name = name
        family = family or self.name
        self.inputs, self.outputs, self.grads = _params(signature), tuple(outputs), tuple(grads)
        self._formula, self._recompute = formula, recompute
        self._bw_params = _params(backward)
        unknown = [g for g in self.grads if g not in self.inputs]
        if unknown:
            raise TypeError(f"rankops::{self.name}: grads name {unknown}, which are not inputs {self.inputs}")

        self.impls = impls  # None when the declaration gives the whole kernel
        self._reference_path = impls(self.name).get("reference") if kernel is None else None
        self._reference, self._prepare = None, prepare
        DECLARED.append(self)
        if kernel is None:
            fwd_impls = impls(self.name)
            kernel = lambda *args: _dispatch.call(family, fwd_impls, _device(args), *prepare(*args))  # noqa: E731
        if backward_kernel is None:
            bwd_impls = impls(self.name + "_backward")
            backward_kernel = lambda *args: _dispatch.call(  # noqa: E731
                family, bwd_impls, _device(args), *backward_prepare(*args))
        self.forward = _custom_op(f"rankops::{self.name}", signature, kernel, fake)
        self.backward = _custom_op(f"rankops::{self.name}_backward", backward, backward_kernel, backward_fake)

        # what the backward reads: tensors are saved, the rest (flags, scales, modes) kept on ctx
        tensor_inputs = {a.name for a in self.forward._opoverload._schema.arguments if "Tensor" in str(a.type)}
        wanted = [n for n in self._bw_params if n in self.inputs or n in self.outputs]
        wanted += [n for n in keep if n not in wanted]
        if recompute is not None:  # a rerun of the forward reads all of its inputs
            wanted += [n for n in self.inputs if n not in wanted]
        self._saved = tuple(n for n in wanted if n in tensor_inputs or n in self.outputs)
        self._kept = tuple(n for n in wanted if n not in self._saved)
        self.forward.register_autograd(self._backward, setup_context=self._setup)
        self._eager_autograd = self._autograd_function()

    def _autograd_function(self) -> type[torch.autograd.Function]:
        """The same formula as a plain autograd.Function around the kernel: what plain eager
        training calls, skipping torch.library's dispatch and autograd wrapper (about 60-100 us a
        call, as long as the whole op at a small training batch)."""
        op = self

        class EagerAutograd(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                out = op.forward.impl(*args)
                op._setup(ctx, args, out)
                return out

            @staticmethod
            def backward(ctx, *grads):
                return op._backward(ctx, *grads)

        EagerAutograd.__name__ = EagerAutograd.__qualname__ = f"{self.name}_eager"
        return EagerAutograd

    def __call__(self, *args):
        if self._reference is not None and (INLINE_REFERENCE or (TRACING_REFERENCE and torch.compiler.is_compiling())):
            # torch.compile of the reference: trace the op's PyTorch code itself (autograd by torch)
            return self._reference(*self._prepare(*args))
        tensors = [a for a in args if isinstance(a, Tensor)]
        if _dispatch.eager(*tensors):
            if _dispatch.direct(*tensors):
                return self.forward.impl(*args)
            return self._eager_autograd.apply(*args)
        return self.forward(*args)

    def _setup(self, ctx, inputs, output):
        outs = output if isinstance(output, tuple) else (output,)
        values = dict(zip(self.inputs, inputs))
        values.update(zip(self.outputs, outs))
        ctx.save_for_backward(*(values[n] for n in self._saved))
        ctx.kept = tuple(values[n] for n in self._kept)
        if len(outs) > 1:
            ctx.mark_non_differentiable(*outs[1:])
            # by-products get no gradient: without this autograd would hand the backward a
            # zero-filled tensor for each (a [B, N] memset per cross layer), unread
            ctx.set_materialize_grads(False)

    def _backward(self, ctx, grad, *_by_products):
        if grad is None:  # an unused output: the backward is linear in it, so every gradient is 0
            return (None,) * len(self.inputs)
        values = dict(zip(self._saved, ctx.saved_tensors))
        values.update(zip(self._kept, ctx.kept))
        if self._recompute is not None and not values[self._recompute]:
            rerun = self(*(True if n == self._recompute else values[n] for n in self.inputs))
            values.update(zip(self.outputs, rerun))
        values["grad"] = grad
        needs = dict(zip(self.inputs, ctx.needs_input_grad))

        def run(**extra):
            values.update(extra)
            return _dispatch.invoke(self.backward, *(values[n] for n in self._bw_params))

        if self._formula is not None:
            got = self._formula(values, needs, run)
        else:
            res = run()
            got = dict(zip(self.grads, res if isinstance(res, tuple) else (res,)))
        return tuple(got.get(n) if needs[n] else None for n in self.inputs)


def op(name: str, **declaration) -> Callable[[Callable], Op]:
    """Decorator form of :class:`Op`: ``@op(name, fake=..., backward=..., ...)`` over the signature."""
    return lambda signature: Op(name, signature, **declaration)
