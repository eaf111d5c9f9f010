"""JavaScript processor stage: ``processBatch(events)`` in an embedded V8 isolate.

Contract (DESIGN.md §3, docs/processors.md):

- Each processor owns one V8 isolate (``py_mini_racer.MiniRacer``); its code is
  loaded once and must define ``function processBatch(events)``. Several processors
  may each define their own ``processBatch``: isolates never share globals.
- One JS call per processor per batch. The batch crosses as ONE JSON string: the
  EventBlock's bytes as the reader built them (``EventBlock.json_array()``, the
  ``native`` JSON), handed to V8 as ``this`` without a Python ``str`` in between
  (:class:`_DirectCall`), ``JSON.parse``d inside V8 and passed to ``processBatch``.
- The harness validates the types (``before``/``after`` object|null, ``tags`` array
  of strings|null, ``event_id`` string) and answers with one compact array: per
  output ``[input index, before, after, tags]`` for an event that kept an input's
  id, ``[-1 - parent, event, 0, 0]`` for a created one. The answer comes back as
  bytes and ``eventbuf.splice_answer`` (C) writes each kept event as its input's JSON
  with those three values put in: no Python object per event. Only created events
  are decoded and built in Python; an invalid answer is re-sent in the old slim form
  so that msgspec names the bad field exactly.
- Return value: an array of event objects; ``null``/``undefined`` means no events;
  a single object means ``[that object]``. Anything else is a ProcessorError.
- An output event whose ``event_id`` matches an input event gets every field but
  ``before``, ``after`` and ``tags`` restored from that input (processors cannot
  corrupt ids, positions or transactions), and the input's ordering key. Other
  top-level fields are dropped. An output event with a missing/unknown
  ``event_id`` (or a second copy of an input's id) is *created*: it needs a valid
  ``table`` and ``op``, gets ``event_id = derive_synthetic_id(parent, processor id,
  n)`` and ``synthetic = processor id``; ``parent`` is the nearest preceding output
  event that came from an input (else the batch's first input) and lends its
  ordering key, and its tenant/ts_ms/source/transaction where absent.

Hazards:

- Line numbers: the user's code is evaluated as its own script, unwrapped, so its
  line 1 is V8's line 1 (line offset 0). A ``//# sourceURL`` comment appended on a
  new line names the script, so stack frames inside the user's code are told apart
  from the harness and from builtins (whose frames read ``<anonymous>``).
- Memory: mini-racer's hard limit is checked after every GC against
  ``used_heap_size``, which counts garbage not yet collected, and a single large
  allocation can pass the check and still set the flag. A breach therefore
  discards the isolate, and the batch is retried once in a fresh isolate (heap =
  script + this batch): only a second breach is reported. A terminated isolate is
  never reused after an OOM (observed: heap stats broken afterwards).
- Timeouts terminate the call; the isolate stays usable (tested), so it is kept.
- No TextEncoder/TextDecoder exist in mini-racer's global scope: strings only.

Poison events (``on_error: dlq``, docs/processors.md "Dead letters"):

- With ``on_error: stop`` (default) any failure of a batch is the pipeline's error.
- With ``dlq`` a failing batch is bisected: each half is run again on its own, a half
  that succeeds is kept, a half that fails is split again, until single events remain
  that still fail. Those become :class:`~deltaforge.model.DeadLetter` records on
  ``Batch.dead`` (the event as this processor received it, the error with the user's JS
  line); the survivors go on in their input order. Every failure counts: a throw, a bad
  return shape, a timeout or the heap limit (the isolate is reset as above). Work is
  bounded: ``log2(n)`` levels, about ``2·k·log2(n/k)`` extra calls for ``k`` poison events,
  ``2n-1`` at worst (every event fails, each call bounded by ``timeout_ms``).
- A batch of 2+ events where EVERY event fails is most likely broken JavaScript, not poison
  rows: the events are still dead-lettered (the pipeline's promise is that it goes on), and
  an error line per such batch says so.
- Hazard: halves are separate ``processBatch`` calls, so a processor that looks across the
  whole batch sees smaller batches while a failure is isolated.
- Integers beyond ±(2^53-1) already arrive as decimal strings (DESIGN.md §3), so
  ``JSON.parse`` loses nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import re
from typing import Any

import msgspec
from py_mini_racer import (
    JSEvalException,
    JSFunction,
    JSParseException,
    JSTimeoutException,
    MiniRacer,
)

from deltaforge._accel import eventbuf
from deltaforge.errors import ConfigError, ProcessorError, ProcessorLimitError
from deltaforge.model import (
    OPS,
    Batch,
    DeadLetter,
    Event,
    EventBlock,
    OrderKey,
    Source,
    Transaction,
    derive_synthetic_id,
)

__all__ = ["JsProcessor", "ProcessorChain", "compile_processor"]

#: Names V8 shows in stack frames (``//# sourceURL``). Only frames of USER_URL are user lines.
USER_URL = "deltaforge-processor.js"
_HARNESS_URL = "deltaforge-harness.js"

# The harness is evaluated BEFORE the user's code so it captures the real JSON and
# Array.isArray even if the user's script replaces them. It evaluates to a factory;
# factory(processBatch) returns the function Python calls once per batch.
# Protocol of the returned string: starts with "[" -> the JSON array of events;
# starts with "!" -> a description of a bad return value (no exception is thrown
# for those, so the Python side can tell them from the user's own exceptions).
_HARNESS = (
    r"""
(function () {
  "use strict";
  const parse = JSON.parse, stringify = JSON.stringify, isArray = Array.isArray;
  function describe(v) {
    if (v === null) return "null";
    if (v === undefined) return "undefined";
    if (isArray(v)) return "an array";
    switch (typeof v) {
      case "number": return "the number " + String(v);
      case "string": return "the string " + stringify(v.length > 40 ? v.slice(0, 40) + "..." : v);
      case "boolean": return "the boolean " + String(v);
      case "function": return "a function";
      case "bigint": return "a bigint";
      case "symbol": return "a symbol";
    }
    return "a value of type " + typeof v;
  }
  function encode(v) {
    try {
      return stringify(v);
    } catch (e) {
      return "!a value JSON.stringify rejects (" + String(e && e.message || e) + ")";
    }
  }
  // Answer of the batch (the protocol Python reads, see _process): one JSON array, one
  // element per output event. An output carrying an input's event_id (its first such output)
  // comes back as [input index, before, after, tags]: Python splices these into the input's
  // own JSON, so its other fields are restored without being serialized here. Any other
  // output is created: [-1 - parent index, the event as returned, 0, 0].
  function validValue(v) {
    return v === null || (typeof v === "object" && !isArray(v));
  }
  function validTags(t) {
    if (t === null) return true;
    if (!isArray(t)) return false;
    for (let j = 0; j < t.length; j++) if (typeof t[j] !== "string") return false;
    return true;
  }
  // The first output carrying an input's event_id, sent back slim: the old protocol, used
  // only to report an invalid event with the exact same message (Python decodes it).
  function slim(events, ids) {
    const n = events.length, res = new Array(n);
    for (let i = 0; i < n; i++) {
      const e = events[i];
      res[i] = ids.delete(e.event_id)
        ? {event_id: e.event_id, before: e.before, after: e.after, tags: e.tags}
        : e;
    }
    return encode(res);
  }
  function answer(out, ids, first) {
    const n = out.length, res = new Array(n);
    let parent = 0;
    for (let k = 0; k < n; k++) {
      const e = out[k];
      if (e === null || typeof e !== "object" || isArray(e)) {
        return "!an array whose element " + k + " is " + describe(e);
      }
      const id = e.event_id;
      const before = e.before === undefined ? null : e.before;
      const after = e.after === undefined ? null : e.after;
      const tags = e.tags === undefined ? null : e.tags;
      if (!validValue(before) || !validValue(after) || !validTags(tags) ||
          (id !== undefined && id !== null && typeof id !== "string")) {
        return "?" + slim(out, first);
      }
      const i = ids.get(id);
      if (i !== undefined) {
        ids.delete(id);
        parent = i;
        res[k] = [i, before, after, tags];
      } else {
        res[k] = [-1 - parent, e, 0, 0];
      }
    }
    return encode(res);
  }
  return function (processBatch) {
    // The batch's JSON arrives as `this` (Python's direct call: no argument array to fill on
    // every call) or as the argument (mini-racer's public call).
    return function deltaforgeRun(arg) {
      const events = parse(arg === undefined ? this : arg);
      const ids = new Map(), first = new Set();
      for (let i = 0; i < events.length; i++) {
        const id = events[i].event_id;
        if (!ids.has(id)) ids.set(id, i);
        first.add(id);
      }
      const out = processBatch(events);
      if (out === null || out === undefined) return "[]";
      if (isArray(out)) return answer(out, ids, first);
      if (typeof out === "object") {
        if (typeof out.then === "function") {
          return "!a Promise (processBatch must return its events synchronously, not be async)";
        }
        return answer([out], ids, first);
      }
      return "!" + describe(out);
    };
  };
})()
//# sourceURL="""
    + _HARNESS_URL
)

# "<script>:<line>: <message>" -- first line of every mini-racer exception text.
_HEADER = re.compile(r"^(?P<script>[^\n]*?):(?P<line>\d+): (?P<message>[^\n]*)")
_USER_FRAME = re.compile(re.escape(USER_URL) + r":(\d+):\d+")

_MIB = 1024 * 1024

log = logging.getLogger("deltaforge.processor")


class _Out(msgspec.Struct):
    """Processor output as decoded. Only the mutable fields are validated eagerly;
    the others stay raw JSON and are decoded only for created events (for events
    that came from an input they are restored, so their JS value is irrelevant)."""

    event_id: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    tags: list[str] | None = None
    tenant_id: msgspec.Raw = msgspec.Raw()
    table: msgspec.Raw = msgspec.Raw()
    op: msgspec.Raw = msgspec.Raw()
    ts_ms: msgspec.Raw = msgspec.Raw()
    source: msgspec.Raw = msgspec.Raw()
    transaction: msgspec.Raw = msgspec.Raw()


_encode = msgspec.json.Encoder().encode
_decode_out = msgspec.json.Decoder(list[_Out]).decode
_decode_created = msgspec.json.Decoder(_Out).decode
_NULL = b"null"


def _absent(raw: msgspec.Raw) -> bool:
    return len(raw) == 0 or bytes(raw) == _NULL


def _limit(spec: Any, name: str) -> int | None:
    limits = getattr(spec, "limits", None)
    value = getattr(limits, name, None) if limits is not None else None
    return int(value) if value else None


class JsProcessor:
    """One ``type: javascript`` processor: one isolate, script loaded once."""

    def __init__(self, spec: Any, index: int) -> None:
        self.id: str = str(spec.id)
        self.index = index
        self.origin: str = str(getattr(spec, "origin", "") or f"spec.processors[{index}].inline")
        self.code: str = spec.code or ""
        self.timeout_ms = _limit(spec, "timeout_ms")
        self.mem_mb = _limit(spec, "mem_mb")
        self.on_error: str = str(getattr(spec, "on_error", "stop") or "stop")
        #: processBatch calls made (attempts included): the bisection's cost is tested on it
        self.calls = 0
        self._timeout_sec = self.timeout_ms / 1000.0 if self.timeout_ms else None
        self._where = f"spec.processors[{index}] ({self.id})"
        self._lines = self.code.splitlines()
        self._mr: MiniRacer | None = None
        self._run: Any = None  # _DirectCall, or the JSFunction itself (see _DirectCall.wrap)
        self._closed = False
        if not self.code.strip():
            raise ProcessorError(
                f"{self._where}: the processor has no JavaScript code",
                f"set spec.processors[{index}].inline or spec.processors[{index}].file",
            )
        self._load()

    # -- isolate lifecycle ---------------------------------------------------

    def _load(self) -> None:
        """(Re)create the isolate and load the harness and the user's script."""
        self._discard()
        mr = MiniRacer()
        self._mr = mr
        try:
            if self.mem_mb:
                # Past V8's own heap ceiling the hard limit never fires: V8 aborts the
                # whole process instead, so refuse such a limit up front.
                ceiling = int(mr.heap_stats()["heap_size_limit"]) // _MIB
                if self.mem_mb >= ceiling:
                    raise ConfigError(
                        f"spec.processors[{self.index}].limits.mem_mb",
                        f"{self.mem_mb} MiB is not below V8's heap ceiling of {ceiling} MiB "
                        "in this build (V8 would abort the process instead of stopping "
                        "the script)",
                        f"set limits.mem_mb below {ceiling}",
                    )
                mr.set_hard_memory_limit(self.mem_mb * _MIB)
            make = mr.eval(_HARNESS)
            assert isinstance(make, JSFunction)
            # Separate script, unwrapped: user line N is V8 line N. The newline keeps a
            # trailing `// comment` in the user's last line from swallowing the marker.
            source = self.code if self.code.endswith("\n") else self.code + "\n"
            try:
                mr.eval(source + "//# sourceURL=" + USER_URL, timeout_sec=self._timeout_sec)
            except JSTimeoutException as exc:
                self._settle(mr)
                raise ProcessorLimitError(
                    f"{self._where}: the script's top-level code ran longer than "
                    f"limits.timeout_ms={self.timeout_ms} while loading {self.origin}",
                    "move work out of the top level of the script or raise "
                    f"spec.processors[{self.index}].limits.timeout_ms",
                ) from exc
            except JSParseException as exc:
                raise self._syntax_error(str(exc)) from exc
            except JSEvalException as exc:
                if self.mem_mb and mr.was_hard_memory_limit_reached():
                    raise self._memory_error("while loading the script") from exc
                raise self._js_error(str(exc), "while loading the script") from exc
            kind = mr.eval("typeof processBatch")
            if kind != "function":
                found = "is not defined" if kind == "undefined" else f"is a {kind}"
                raise ProcessorError(
                    f"{self._where}: {self.origin} defines no function processBatch(events) "
                    f"(processBatch {found})",
                    "define `function processBatch(events) { ... return events; }` "
                    "at the top level of the script",
                )
            run = make(mr.eval("processBatch"))
            assert isinstance(run, JSFunction)
            self._run = _DirectCall.wrap(mr, run)
        except BaseException:
            self._discard()
            raise

    def _settle(self, mr: MiniRacer) -> None:
        """After a timeout: one round trip queued behind the termination, so mini-racer
        delivers the cancelled call's callback before a later close() stops its event
        loop, and proof that the isolate still runs code (else it is rebuilt)."""
        try:
            mr.eval("0")
        except JSEvalException:
            self._discard()

    def _discard(self) -> None:
        self._run = None
        mr, self._mr = self._mr, None
        if mr is not None:
            mr.close()

    def close(self) -> None:
        self._closed = True
        self._discard()

    # -- the per-batch call --------------------------------------------------

    def _call(self, payload: bytes, batch: Batch) -> bytes:
        """Run processBatch on the batch's JSON; returns the harness's answer (UTF-8)."""
        if self._closed:
            raise ProcessorError(f"{self._where}: process() called after close()")
        for attempt in (1, 2):
            if self._mr is None:
                self._load()  # the previous isolate hit the memory limit
            mr, run = self._mr, self._run
            assert mr is not None and run is not None
            self.calls += 1
            try:
                result = run(payload, timeout_sec=self._timeout_sec)
            except JSTimeoutException as exc:
                self._settle(mr)
                raise ProcessorLimitError(
                    f"{self._where}: processBatch ran longer than limits.timeout_ms="
                    f"{self.timeout_ms} on batch {_origin(batch)} ({len(batch.events)} events)",
                    "look for an endless loop in processBatch, lower batch.max_events, or "
                    f"raise spec.processors[{self.index}].limits.timeout_ms",
                ) from exc
            except JSEvalException as exc:
                if not (self.mem_mb and mr.was_hard_memory_limit_reached()):
                    raise self._js_error(str(exc), f"on batch {_origin(batch)}") from exc
                # Terminated by the heap limit: never reuse this isolate.
                self._discard()
                if attempt == 2:
                    raise self._memory_error(f"on batch {_origin(batch)}") from exc
                continue
            if self.mem_mb and mr.was_hard_memory_limit_reached():
                # Finished, but the heap crossed the limit on the way (and a termination
                # may still be pending): confirm with a clean isolate.
                self._discard()
                if attempt == 2:
                    raise self._memory_error(f"on batch {_origin(batch)}")
                continue
            if isinstance(result, str):  # mini-racer's public call
                return result.encode()
            if not isinstance(result, bytes):  # pragma: no cover - the harness returns strings
                raise ProcessorError(f"{self._where}: internal: harness returned {type(result)}")
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def process(self, batch: Batch) -> Batch:
        """Run ``processBatch`` on the batch; with ``on_error: dlq`` isolate the events that fail."""
        if not batch.events:
            return batch
        if self.on_error != "dlq":
            return self._process(batch)
        try:
            return self._process(batch)
        except ProcessorError as e:
            return self._isolate(batch, e)

    def _isolate(self, batch: Batch, error: ProcessorError) -> Batch:
        """Bisect ``batch`` (whose whole run failed with ``error``) down to the events that fail."""
        inputs, in_keys = batch.events, batch.keys
        events: list[Event] = []
        keys: list[OrderKey] = []
        dead = list(batch.dead)
        dead_keys = list(batch.dead_keys)

        def split(lo: int, hi: int, err: ProcessorError) -> None:
            if hi - lo == 1:
                dead.append(self._dead_letter(inputs[lo], err))
                dead_keys.append(in_keys[lo])
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):  # left first: the survivors keep their order
                part = inputs[a:b]
                sub = Batch(seq=batch.seq, events=part, keys=in_keys[a:b], end=batch.end,
                            origin=_event_origin(part[0]) if b - a == 1 else batch.origin)
                try:
                    out = self._process(sub)
                except ProcessorError as e:
                    split(a, b, e)
                    continue
                events.extend(out.events)
                keys.extend(out.keys)

        split(0, len(inputs), error)
        failed = len(dead) - len(batch.dead)
        if failed == len(inputs) > 1:
            log.error("%s: every one of the %d events of batch %s failed, so they all went to the "
                      "dead-letter stream; this looks like broken JavaScript rather than poison rows: %s",
                      self._where, failed, _origin(batch), error.detail)
        return Batch(seq=batch.seq, events=events, keys=keys, end=batch.end, origin=batch.origin,
                     dead=dead, dead_keys=dead_keys)

    def _dead_letter(self, event: Event, err: ProcessorError) -> DeadLetter:
        src = event.source
        return DeadLetter(
            stage="processor", processor=self.id, error=err.detail, table=event.table,
            file=src.file if src else "", pos=src.pos if src else 0, row=src.row if src else None,
            gtid=src.gtid if src else None, event_id=event.event_id, event=event, ts_ms=event.ts_ms,
        )

    def _process(self, batch: Batch) -> Batch:
        """Run ``processBatch`` once on the whole batch; the output events as an EventBlock.

        The batch enters V8 as one JSON string (the reader's bytes, no re-encoding). An output
        that kept an input's event_id is that input's JSON with ``before``, ``after`` and
        ``tags`` spliced in (no Python object per event); created events are built by
        :meth:`_created`.
        """
        inputs = batch.events
        block = inputs if isinstance(inputs, EventBlock) else EventBlock.from_events(inputs)
        result = self._call(block.json_array(), batch)
        if result.startswith(b"!"):
            raise ProcessorError(
                f"{self._where}: processBatch returned {result[1:].decode()} on batch {_origin(batch)}",
                "return an array of event objects, a single event object, or null to drop "
                "every event",
            )
        if result.startswith(b"?"):  # an invalid event: msgspec names it exactly
            try:
                _decode_out(result[1:])
            except msgspec.ValidationError as exc:
                raise ProcessorError(
                    f"{self._where}: processBatch returned an invalid event on batch "
                    f"{_origin(batch)}: {exc}",
                    "before/after must be objects or null, tags an array of strings or null, "
                    "event_id a string",
                ) from exc
            raise ProcessorError(f"{self._where}: internal: the harness flagged a valid answer")  # pragma: no cover
        return self._rebuild(batch, block, result)

    def _rebuild(self, batch: Batch, block: EventBlock, answer: bytes) -> Batch:
        """The output batch: inputs' JSON with the processor's before/after/tags spliced in (C, no
        Python object per event: ``eventbuf.splice_answer``), created events built here."""
        seqs: dict[int, int] = {}

        def created(n: int, p: int, raw: bytes) -> tuple[bytes, str, str, str | None]:
            seq = seqs.get(p, 0)
            seqs[p] = seq + 1
            try:
                o = _decode_created(raw)
            except msgspec.ValidationError as exc:  # pragma: no cover - the harness validated it
                raise ProcessorError(f"{self._where}: processBatch returned an invalid event on batch "
                                     f"{_origin(batch)}: {exc}") from exc
            event = self._created(o, n, block[p], seq, batch)
            tx = event.transaction.id if event.transaction is not None else ""
            return _encode(event), event.table, tx, event.tenant_id

        try:
            events, keys = eventbuf.splice_answer(block, batch.keys, answer, created)
        except ValueError as exc:  # pragma: no cover - the harness and the reader write what the splice reads
            raise ProcessorError(f"{self._where}: internal: cannot splice the processor's answer on batch "
                                 f"{_origin(batch)}: {exc}") from exc
        return Batch(seq=batch.seq, events=events, keys=keys, end=batch.end, origin=batch.origin,
                     dead=batch.dead, dead_keys=batch.dead_keys)

    def _created(self, o: _Out, n: int, parent: Event, seq: int, batch: Batch) -> Event:
        """Build an event the processor added; validate what it cannot inherit."""

        def bad(field: str, detail: str) -> ProcessorError:
            return ProcessorError(
                f"{self._where}: processBatch returned a new event (element {n}, no input "
                f"event_id) whose {field} {detail}, on batch {_origin(batch)}",
                'a created event needs table "db.table" and op one of c|u|d|r; to modify '
                "an existing event keep its event_id",
            )

        def field(raw: msgspec.Raw, name: str, typ: Any) -> Any:
            try:
                return msgspec.json.decode(raw, type=typ)
            except msgspec.ValidationError as exc:
                raise bad(name, f"is invalid ({exc})") from exc

        if _absent(o.table):
            raise bad("table", "is missing")
        table = field(o.table, "table", str)
        db, _, tbl = table.partition(".")
        if not db or not tbl:
            raise bad("table", f'is {table!r}, not "db.table"')
        if _absent(o.op):
            raise bad("op", "is missing")
        op = field(o.op, "op", str)
        if op not in OPS:
            raise bad("op", f"is {op!r}, not one of c|u|d|r")
        tenant = parent.tenant_id if _absent(o.tenant_id) else field(o.tenant_id, "tenant_id", str)
        ts_ms = parent.ts_ms if _absent(o.ts_ms) else field(o.ts_ms, "ts_ms", int)
        source = parent.source if _absent(o.source) else field(o.source, "source", Source)
        tx = (
            parent.transaction
            if _absent(o.transaction)
            else field(o.transaction, "transaction", Transaction)
        )
        return Event(
            event_id=derive_synthetic_id(parent.event_id, self.id, seq),
            tenant_id=tenant,
            table=table,
            op=op,
            before=o.before,
            after=o.after,
            ts_ms=ts_ms,
            source=source,
            transaction=tx,
            tags=o.tags,
            synthetic=self.id,
        )

    # -- error messages ------------------------------------------------------

    def _user_line(self, line: int) -> str:
        """`line 12 of <origin> (`the code`)`: the line as the user wrote it."""
        text = self._lines[line - 1].strip() if 0 < line <= len(self._lines) else ""
        if len(text) > 80:
            text = text[:77] + "..."
        return f"line {line} of {self.origin}" + (f" reads `{text}`" if text else "")

    def _syntax_error(self, text: str) -> ProcessorError:
        m = _HEADER.match(text)
        if m is None:
            return ProcessorError(
                f"{self._where}: {_first_line(text)} in {self.origin}",
                f"fix the JavaScript syntax in {self.origin}",
            )
        # "Unexpected end of input" is reported on the sourceURL line we appended:
        # point at the user's last line instead.
        line = max(1, min(int(m["line"]), len(self._lines)))
        kind, _, message = m["message"].partition(": ")
        if not message:
            kind, message = "SyntaxError", m["message"]
        return ProcessorError(
            f"{self._where}: {kind} at line {line}: {message}; {self._user_line(line)}",
            f"correct the JavaScript at line {line} of {self.origin}",
        )

    def _js_error(self, text: str, context: str) -> ProcessorError:
        """A JS exception: the error, the user's line, and where (batch origin)."""
        m = _HEADER.match(text)
        message = m["message"] if m else _first_line(text)
        line: int | None = None
        if m and m["script"] == USER_URL:
            line = int(m["line"])  # thrown directly by the user's code
        else:
            frame = _USER_FRAME.search(text)  # thrown by a builtin the user called
            if frame:
                line = int(frame.group(1))
        at = f" at line {line} of {self.origin}" if line else f" in {self.origin}"
        return ProcessorError(
            f"{self._where}: {message}{at} {context}",
            f"correct the JavaScript{f' at line {line}' if line else ''} in {self.origin} "
            "(or guard against the input that triggers it); the pipeline resumes from "
            "its checkpoint after a restart",
        )

    def _memory_error(self, context: str) -> ProcessorLimitError:
        return ProcessorLimitError(
            f"{self._where}: the V8 heap exceeded limits.mem_mb={self.mem_mb} {context}",
            "keep less state in processBatch, lower batch.max_events/batch.max_bytes, or "
            f"raise spec.processors[{self.index}].limits.mem_mb",
        )


def compile_processor(spec: Any, index: int) -> None:
    """Load processor ``index`` in a throwaway isolate exactly as a pipeline start does
    (``deltaforge check``): raises the same ProcessorError (syntax error at the user's
    line, no processBatch, top-level exception or timeout) or ConfigError (limits)."""
    JsProcessor(spec, index).close()


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] or "unknown JavaScript error"


def _event_origin(event: Event) -> str:
    """"db.table at file:pos row n": where one event came from, for the error of its dead letter."""
    src = event.source
    if src is None:
        return event.table
    return f"{event.table} at {src.file}:{src.pos} row {src.row}"


def _origin(batch: Batch) -> str:
    if batch.origin:
        return batch.origin
    return f"#{batch.seq} ending at {batch.end}"


class ProcessorChain:
    """The configured processors, applied in order; processor i+1 gets i's output."""

    def __init__(self, specs: list[Any], pipeline_name: str) -> None:
        self.pipeline_name = pipeline_name
        self.processors: list[JsProcessor] = []
        try:
            for i, spec in enumerate(specs):
                kind = getattr(spec, "type", "javascript")
                if kind != "javascript":
                    raise ConfigError(
                        f"spec.processors[{i}].type",
                        f"unsupported processor type {kind!r}",
                        "use type: javascript",
                    )
                self.processors.append(JsProcessor(spec, i))
        except BaseException:
            self.close()
            raise

    def process(self, batch: Batch) -> Batch:
        for processor in self.processors:
            batch = processor.process(batch)
        return batch

    def close(self) -> None:
        for processor in self.processors:
            processor.close()

    def __enter__(self) -> ProcessorChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirectCall:
    """Call the harness through mini-racer's C API from the calling thread, bytes in and out.

    ``JSFunction.__call__`` hops to mini-racer's asyncio thread, evaluates ``[]`` for the
    argument array and waits on a future (~250 µs per call on this project's machine), and
    converts the payload ``str`` -> UTF-8 and the answer UTF-8 -> ``str``. Here the batch's
    bytes become a V8 string in one ``mr_alloc_string_val`` and are passed as ``this`` (no
    argument array to fill: setting its element was a second round trip to the V8 thread),
    the result is taken from the context's queue for uncancelable tasks, which the V8 thread
    fills directly, and a string answer is copied out as bytes.

    Hazard: this uses mini-racer internals (pinned to 0.14.x in pyproject.toml). The
    results queue is shared with ``MiniRacer.eval``; the processor never calls both at
    once (one thread per isolate). ``wrap`` falls back to the public call when the
    internals are not there.
    """

    _STR_UTF8 = 5  # mini-racer's value type of a UTF-8 string

    def __init__(self, mr: MiniRacer, func: JSFunction) -> None:
        ctx: Any = mr._ctx  # private: see the class docstring
        self._ctx = ctx
        self._dll = ctx._dll
        self._raw = ctx._ctx
        self._func = ctx._python_to_value_handle(func)
        self._noargs = ctx._python_to_value_handle(mr.eval("[]"))
        self._results: queue.Queue[Any] = ctx._non_cancelable_mr_task_results_queue
        self._alloc = self._dll.mr_alloc_string_val
        self._wrap = ctx._wrap_raw_handle

    @classmethod
    def wrap(cls, mr: MiniRacer, func: JSFunction) -> Any:
        try:
            return cls(mr, func)
        except AttributeError:  # another mini-racer layout: the public (slower) call
            return func

    def __call__(self, payload: bytes, timeout_sec: float | None = None) -> Any:
        this = self._wrap(self._alloc(self._raw, payload, len(payload), self._STR_UTF8))
        task = self._dll.mr_call_function(self._raw, self._func.raw, this.raw, self._noargs.raw, 0)
        try:
            handle = self._results.get(timeout=timeout_sec)
        except queue.Empty:
            self._dll.mr_cancel_task(self._raw, task)
            handle = self._results.get()  # the terminated call still reports; drain it
            with contextlib.suppress(Exception):
                self._ctx._value_handle_to_python(handle)
            raise JSTimeoutException from None
        value = handle.raw.contents
        if value.type == self._STR_UTF8:
            return ctypes.string_at(value.value.bytes_val, value.len)
        return self._ctx._value_handle_to_python(handle)  # raises the JS exception, if any
