"""Router-data dump: one forward pass per batch → routing probabilities and response NLLs.

For each sample (a normalised record, see :mod:`selectflow.data.records`) the dump computes,
in the same pass:

* ``moe_probs`` [L, E]: each MoE layer's routing distribution (the score the model routes
  with, see :mod:`selectflow.router.families`; ``softmax_logits`` forces a softmax of the logits),
  averaged over the sample's valid (attention-mask) tokens;
* ``quality_logits`` [L, 2]: Select-MoE quality-gate outputs (the gates of a model converted
  by :mod:`selectflow.router.gate`, or modules whose name matches ``quality_gate_pattern``),
  averaged the same way, when the model has them;
* ``nll_response``: mean NLL of the response tokens given the prompt, and (``ifd``)
  ``nll_response_alone``: the same tokens after an empty prompt;
* ``nll_eos``: NLL of the end-of-sequence token after the response (NaN when the
  sequence was cut by ``max_length`` or the tokenizer has no eos token);
* ``hidden`` [H] (``hidden_states``): the model's last hidden state (after the final norm, what
  ``output_hidden_states`` returns last) averaged over the sample's valid tokens.

Router logits come from ``output_router_logits=True`` where the model returns them, else
from forward hooks on modules whose name matches ``router_pattern``; the per-family table
lives in :mod:`selectflow.router.families`, the checks of what is captured in
:mod:`selectflow.router.capture`. Batches are length-sorted; rows are written in shard order.

The last hidden state comes from a forward hook on the decoder (``model.get_decoder()``),
whose ``last_hidden_state`` is checked once, on the probe forward, against
``output_hidden_states``; where the hook gives something else the dump asks the model for
``output_hidden_states`` instead (every layer's states held for the batch: more memory).
Either way it is the same forward pass as the routing, never a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from selectflow.data.records import format_turns
from selectflow.data.tokens import encode_pair, pad_batch, pad_token_id
from selectflow.router.capture import Capture, CaptureError, candidate_settings, resolve_capture
from selectflow.router.families import EXPERT_KEYS, expected_moe_layers, n_routed_experts
from selectflow.router.forward import (
    capture_outputs,
    eos_nll,
    last_hidden,
    load_model,
    masked_token_mean,
    response_nll,
)
from selectflow.router.gate import quality_gates
from selectflow.router.modules import named_modules_matching
from selectflow.router.routerfile import RouterShard
from selectflow.runtime.device import inference_dtype, resolve_device
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.oom import free_memory, run_adaptive
from selectflow.schema import schema_default

log = logging.getLogger(__name__)


def _schema(key: str):
    """A field whose default is the schema's ``router_dump.<key>``."""
    return field(default_factory=partial(schema_default, "router_dump", key))


@dataclass
class DumpSettings:
    batch_size: int = _schema("batch_size")
    max_length: int = _schema("max_length")
    ifd: bool = _schema("ifd")
    router_pattern: str = _schema("router_pattern")
    router_source: str = _schema("router_source")
    quality_gate_pattern: str | None = _schema("quality_gate_pattern")
    device: str = _schema("device")
    dtype: str = _schema("dtype")
    sort_by_length: bool = True
    softmax_logits: bool = _schema("softmax_logits")
    hidden_states: bool = _schema("hidden_states")

    def digest(self) -> str:
        """Short hash of every setting that changes the dumped numbers.

        ``hidden_states`` adds a dataset and changes no number: a stored shard's reuse checks it
        apart (:func:`selectflow.stages.router.reusable_shard`), so that turning it off reuses shards.
        """
        skip = ("batch_size", "device", "sort_by_length", "router_source", "hidden_states")
        keys = {k: v for k, v in asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


class RouterDumper:
    """Holds a loaded model and turns lists of normalised records into :class:`RouterShard` s."""

    def __init__(self, model, tokenizer, settings: DumpSettings, device: torch.device):
        self.model, self.tokenizer, self.settings, self.device = model, tokenizer, settings, device
        self.forwards: list[list[list[int]]] = []  # token ids of each checked forward since the last verify (one dump)
        self.capture: Capture | None = None
        if settings.quality_gate_pattern:
            self.quality_gates = named_modules_matching(model, settings.quality_gate_pattern)
        else:  # a converted model's gates (selectflow.router.gate) are found without a pattern
            self.quality_gates = quality_gates(model)
        try:
            self.capture = resolve_capture(model, settings)
        except CaptureError as err:
            raise self._with_remedy(err, self._probe()) from None
        self.use_output, self.routers = self.capture.use_output, self.capture.modules
        log.info("%s; %d quality gates", self.capture.summary(), len(self.quality_gates))
        self._check_capture()
        self.hidden_hook: list[tuple[str, torch.nn.Module]] = []  # empty: output_hidden_states
        if settings.hidden_states:
            self._resolve_hidden()

    @torch.inference_mode()
    def _resolve_hidden(self) -> None:
        """Hook the decoder for the last hidden state if, on the probe, it equals ``output_hidden_states[-1]``."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        decoder = decoder if isinstance(decoder, torch.nn.Module) and decoder is not self.model else None
        ids, mask = pad_batch(self._probe(), pad_token_id(self.tokenizer))
        ids, mask = ids.to(self.device), mask.to(self.device)
        with capture_outputs([("decoder", decoder)] if decoder is not None else [], whole=True) as calls:
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        want = (getattr(out, "hidden_states", None) or [None])[-1]
        if not torch.is_tensor(want):
            raise SelectFlowError(
                f"{type(self.model).__name__} returns no hidden states (output_hidden_states); "
                "set router_dump.hidden_states: false (selection.features: routing needs none)"
            )
        if decoder is None:
            log.info("last hidden state via output_hidden_states (no decoder module to hook)")
            return
        hooked = last_hidden(calls[0][-1]) if calls[0] else None
        valid = mask.bool()
        if torch.is_tensor(hooked) and hooked.shape == want.shape and torch.equal(hooked[valid], want[valid]):
            self.hidden_hook = [("decoder", decoder)]
            log.info("last hidden state via a hook on %s", type(decoder).__name__)
        else:
            log.info(
                "last hidden state via output_hidden_states (the %s hook gives %s)",
                type(decoder).__name__,
                "no tensor" if hooked is None else "other values",
            )

    def _probe(self) -> list[list[int]]:
        """Two short sequences of ordinary text, one padded: the forward that checks a capture up front."""
        # not a special token: a pad/eos embedding may be all zeros (padding_idx), and zero
        # hidden states give all-zero router logits that the checks rightly refuse
        ids = self.tokenizer.encode("Name three rivers and the seas they flow into.", add_special_tokens=False)[:8]
        ids = ids if len(ids) >= 4 else list(range(1, 5))
        return [ids, ids[:-1]]

    @torch.inference_mode()
    def _check_capture(self) -> None:
        """One short forward so a capture that fails its checks fails before any dump."""
        self.forwards = []
        probe = self._probe()
        try:
            # as the dump will run: a batch of two, one padded; one at a time at batch 1
            for seqs in (
                [probe] if self.settings.batch_size > 1 and not self.capture.batch_dependent else [[x] for x in probe]
            ):
                self._forward(seqs)
            self.capture.verify()
        except CaptureError as err:
            raise self._with_remedy(err, err.seqs or self.forwards[err.call or 0]) from None

    @torch.inference_mode()
    def _passes(self, capture: Capture, batches: list[list[list[int]]]) -> bool:
        """Whether ``capture`` passes its checks on each of ``batches`` (token ids per row)."""
        try:
            for seqs in batches:
                self._forward(seqs, capture)
            capture.verify()
        except CaptureError:
            return False
        return True

    def _with_remedy(self, err: CaptureError, seqs: list[list[int]]) -> SelectFlowError:
        """``err`` with a remedy that was tried here on the forward that failed (``seqs``), or the news that none
        was."""
        widths = sorted({len(x) for x in seqs})
        capture = self.capture
        if capture is not None and len(widths) > 1 and self._passes(capture, [[x] for x in seqs]):
            padded = 1 - sum(len(x) for x in seqs) / (len(seqs) * widths[-1])
            return SelectFlowError(
                f"{err}; the failing batch of {len(seqs)} records ({padded:.0%} padding) passes the same checks "
                "when each record is forwarded alone: lower router_dump.batch_size (1 was tested and works)"
            )
        tried = []
        for settings, change in candidate_settings(self.model, self.settings):
            tried.append(change.removeprefix("set "))
            try:
                candidate = resolve_capture(self.model, settings)
            except CaptureError:
                continue
            if self._passes(candidate, [seqs]):
                return SelectFlowError(
                    f"{err}; {change} (tested on the same batch: it captures "
                    f"{candidate.summary().removeprefix('routers via ')})"
                )
        if n_routed_experts(self.model.config) is None and not expected_moe_layers(self.model):
            return SelectFlowError(
                f"{err}; its config declares no experts ({'/'.join(EXPERT_KEYS)}) and it has no "
                "'experts' modules: use an MoE model or set 'router_dump.router_pattern'"
            )
        dtype = (
            ""
            if self.settings.dtype == "float32"
            else ("; if the values overflow in half precision, set router_dump.dtype: float32 (not tested here)")
        )
        return SelectFlowError(
            f"{err}; no capture tried here passes the checks ({'; '.join(tried) or 'no other capture applies'})"
            f"{dtype}; set router_dump.router_pattern to the name of the router's linear layer, or add the "
            "family to FAMILIES in selectflow/router/families.py (README, MoE families)"
        )

    @classmethod
    def from_path(cls, path: str, settings: DumpSettings) -> RouterDumper:
        device = resolve_device(settings.device)
        model, tokenizer = load_model(path, device, inference_dtype(device, settings.dtype))
        return cls(model, tokenizer, settings, device)

    def _forward(self, seqs: list[list[int]], capture: Capture | None = None, hidden: bool = False):
        """One padded forward of ``seqs`` with ``capture`` (default: the dumper's) hooked and checked.

        ``hidden``: also return the last hidden state [B, T, H] (else None).
        """
        capture = capture or self.capture
        if capture is self.capture:
            self.forwards.append(seqs)
        ids, mask = pad_batch(seqs, pad_token_id(self.tokenizer))
        ids, mask = ids.to(self.device), mask.to(self.device)
        hook = self.hidden_hook if hidden else []
        with (
            capture_outputs(capture.modules, whole=True) as routed,
            capture_outputs(self.quality_gates) as gates,
            capture_outputs(hook, whole=True) as last,
        ):
            kwargs = {"output_router_logits": True} if capture.use_output else {}
            if hidden and not hook:
                kwargs["output_hidden_states"] = True
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
        states = None
        if hidden:
            states = last_hidden(last[0][-1]) if hook else out.hidden_states[-1]
        n_tokens = ids.numel()
        try:
            if capture.use_output:
                router_logits = list(getattr(out, "router_logits", None) or [])
                names = [f"router_logits[{i}]" for i in range(len(router_logits))]
            else:
                names, router_logits = [], []
                for (name, _), calls in zip(capture.modules, routed):
                    if len(calls) != 1 and not (calls and capture.family.loops):
                        raise CaptureError(
                            f"router module {name} ran {len(calls)} times in one forward pass, "
                            "expected once (router_dump.router_pattern should match one router per "
                            "MoE layer)"
                        )
                    names += [name] * len(calls)
                    router_logits += [capture.pick(name, c, n_tokens) for c in calls]
            if not router_logits or any(r is None for r in router_logits):
                raise CaptureError(f"{type(self.model).__name__} produced no router logits")
            router_logits = capture.check(router_logits, names, n_tokens, valid=mask.reshape(-1))
        except CaptureError as err:
            err.seqs = seqs
            raise
        return ids, mask, out.logits, router_logits, [g[0] for g in gates], states

    def _encode(self, records: list[dict]) -> list[tuple[list[int], int, list[int] | None]]:
        """Per record: ids of prompt + response, the prompt's length, ids after an empty prompt (IFD)."""
        s, header = self.settings, format_turns([])
        out = []
        for r in records:
            ids, n_prompt = encode_pair(self.tokenizer, r["prompt"], r["response"], s.max_length)
            alone = encode_pair(self.tokenizer, header, r["response"], s.max_length)[0] if s.ifd else None
            out.append((ids, n_prompt, alone))
        return out

    def _batch(self, items: list[tuple[list[int], int, list[int] | None]]) -> dict[str, torch.Tensor]:
        """One batch → per-sample results, left on the device (one transfer at the end, no sync)."""
        seqs = [ids for ids, _, _ in items]
        ids, mask, logits, router_logits, gates, states = self._forward(seqs, hidden=self.settings.hidden_states)
        lengths = [len(x) for x in seqs]
        nll, n_resp = response_nll(logits, ids, [n for _, n, _ in items], lengths)
        out = {
            "moe_probs": masked_token_mean(
                [self.capture.distribution(x, self.settings.softmax_logits) for x in router_logits], mask, softmax=False
            ),
            "nll_response": nll,
            "n_response_tokens": n_resp,
            "nll_eos": eos_nll(logits, ids, lengths, self.tokenizer.eos_token_id),
        }
        if gates:
            out["quality_logits"] = masked_token_mean(gates, mask, softmax=False)
        if states is not None:
            out["hidden"] = masked_token_mean([states], mask, softmax=False)[:, 0]
        if self.settings.ifd:
            alone = [a for _, _, a in items]
            ids2, _, logits2, _, _, _ = self._forward(alone)
            out["nll_response_alone"], _ = response_nll(
                logits2, ids2, [self._header_len] * len(alone), [len(a) for a in alone]
            )
        return out

    @torch.inference_mode()
    def dump(self, records: list[dict], batch_size: int | None = None, progress: bool = True) -> RouterShard:
        """Run the model over ``records``; rows of the result follow the input order."""
        s = self.settings
        batch_size = batch_size or s.batch_size
        if self.capture.batch_dependent and batch_size > 1:
            log.warning(
                "%s: values depend on the other rows of a batch; dumping one sample at a time (batch %d ignored)",
                self.capture.model_type,
                batch_size,
            )
            batch_size = 1
        self.effective_batch_size = 0  # the largest batch that produced rows (an OOM halves the next ones)
        self._header_len = len(self.tokenizer(format_turns([]), add_special_tokens=False).input_ids)
        encoded = self._encode(records)
        order = list(range(len(records)))
        if s.sort_by_length:
            order.sort(key=lambda i: len(encoded[i][0]), reverse=True)
        bar = tqdm(total=len(records), desc="router dump", unit="sample", disable=not progress, mininterval=1.0)

        def run(lo: int, hi: int):
            part = self._batch([encoded[i] for i in order[lo:hi]])
            self.effective_batch_size = max(self.effective_batch_size, hi - lo)
            bar.update(hi - lo)
            return part

        self.forwards = []
        try:
            parts = run_adaptive(run, 0, len(records), batch_size, what="router-dump batch")
            self.capture.verify()  # value checks of every batch, one device sync
        except CaptureError as err:
            raise self._with_remedy(err, err.seqs or self.forwards[err.call or 0]) from None
        finally:
            bar.close()
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        merged = {k: torch.cat([p[k] for p in parts]).cpu().numpy()[inverse] for k in (parts[0] if parts else {})}
        merged["n_response_tokens"] = merged["n_response_tokens"].astype(np.int32)
        for key in ("nll_response", "nll_response_alone", "nll_eos"):
            if key in merged:
                merged[key] = merged[key].astype(np.float32)
        return RouterShard(
            sample_id=np.array([r["sample_id"] for r in records], dtype=object),
            n_tokens=np.array([len(ids) for ids, _, _ in encoded], dtype=np.int32),
            record=np.array([json.dumps(r, ensure_ascii=False) for r in records], dtype=object),
            **merged,
        )

    def close(self) -> None:
        """Free the model and the CUDA cache (the next rule may need the memory)."""
        del self.model
        free_memory()
