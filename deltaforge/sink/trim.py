"""Trimming the sink's streams without losing what consumers have not acknowledged.

``max_len`` (soft): a stream is trimmed to about ``max_len`` entries, but never past an entry that a
consumer group of the stream has not acknowledged. ``max_len_hard`` (optional, the memory cap): the
stream is cut to ``max_len_hard`` entries whatever the groups hold; unacknowledged entries cut that
way are counted, logged and marked in the stream by a *gap entry*.

Why not ``XADD ... MAXLEN ~ n``: it trims whatever is oldest, including entries a consumer group has
not read yet or read and not acknowledged (a worker that was down), and those invalidations are then
lost without a trace.

How (one Lua script per stream, :data:`TRIM_LUA`, atomic, so no group can appear or move between
reading the groups and trimming):

1. ``floor`` = min over the stream's groups of (its oldest pending id still in the stream,
   ``last-delivered-id + 1``) from ``XINFO GROUPS`` and ``XPENDING``: every entry below ``floor`` is
   acknowledged by every group. (Pending ids whose entries are already gone, after a hard cut or an
   XDEL, do not count: they would hold the floor until a worker reclaims them, maybe never.)
2. No group, or every entry below ``floor``: ``XTRIM MAXLEN ~ max_len`` (as before). ``floor`` inside
   the stream: cut at min(floor, the id keeping about max_len entries). Which one is decided by
   counting the entries from ``floor`` on (``XRANGE``, at most ``max_len``; short when consumers are
   near the end, the usual case): fewer than ``max_len`` means ``MAXLEN ~ max_len``, else ``MINID ~
   floor``. When ``max_len`` exceeds ``scan_cap``, the head up to ``floor`` is counted instead, at
   most ``scan_cap`` entries per trim, and later trims go on from there.
3. Hard cap: while the stream is longer than ``max_len_hard``, the oldest entries are cut exactly
   (``XTRIM MINID``). For every group, the cut entries it had not acknowledged are counted: entries
   above its last-delivered id, plus its pending entries in the cut range. If any, the script appends
   the gap entry (below) and returns the counts. An earlier gap entry that is cut before some group
   read it is carried into the new one (its counts added for those groups, its ``first_id`` kept), so
   a worker that comes back after a long outage still learns the whole lost range from the one gap
   entry left.

Gap entry (appended to the trimmed stream; it only exists after a hard cut that lost something)::

    XADD <stream> * df-event {"df_gap":{"reason":"max_len_hard","stream":..,"first_id":..,"last_id":..,
                               "entries":<cut>,"unacked":{"<group>":<n>,..},"max_len_hard":<n>,
                               "pipeline":..,"sink":..,"ts_ms":..}} df-gap 1

``df-event`` comes first and holds JSON without ``before``/``after``: the seed's Node worker parses
it, finds no cache keys and acks it; ``deltaforge worker`` recognises ``df-gap`` and reports it.

When (:meth:`StreamTrimmer.after_commit`, called after each successful commit, outside the
exactly-once MULTI): a stream is due once ``every_entries`` entries (about a tenth of the limit) were
written to it and ``min_interval_s`` passed since its last trim, or once ``every_s`` passed while it
has new entries or is held above its limit. All due streams go in one pipelined EVALSHA round trip,
on a connection of its own (the commit connection carries the fencing WATCH); no per-event work.
Without commits nothing runs: a stream held by a lagging group shrinks at the first commit after the
group caught up.

Hazards:

- A trim never fails a commit: any failure is logged and the trim is retried later, with backoff.
  Until then the stream keeps its entries (memory grows; nothing is lost).
- A group that never acknowledges (a forgotten group) holds every entry after its floor: the stream
  grows without bound unless ``max_len_hard`` is set. The held entries are logged (once a minute)
  and exported as ``deltaforge_trim_held_entries``. ``XGROUP DESTROY`` a dead group.
- Consumers that read without a group (XREAD) are invisible to Redis and are not protected.
- Needs Redis >= 6.2 (``XTRIM MINID``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from typing import Any

import hiredis
import msgspec

from deltaforge._accel import resp
from deltaforge.dsn import RedisURI
from deltaforge.errors import DeltaForgeError
from deltaforge.sink.redis_conn import RedisConnection, classify

log = logging.getLogger("deltaforge.sink")

#: the gap entry's marker field (the payload is in ``df-event``, first, like every entry)
GAP_FIELD = "df-gap"

# KEYS[1]: stream. ARGV: max_len (0: none), max_len_hard (0: none), scan_cap, gap metadata (JSON object).
# Returns {removed, forced, length, first_lost, last_lost, gap_id, floor_group, group1, lost1, ...}.
TRIM_LUA = r"""
local key = KEYS[1]
local max_len = tonumber(ARGV[1])
local hard = tonumber(ARGV[2])
local scan_cap = tonumber(ARGV[3])
local CHUNK = 500

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end
local function succ(id)
  local ms, seq = parse(id)
  if seq >= 9007199254740991 then return id end -- beyond exact doubles: keep that one entry
  return string.format('%.0f-%.0f', ms, seq + 1)
end

local len = redis.call('XLEN', key)
if len == 0 then return {0, 0, 0, '', '', '', ''} end

local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1][1]

-- every entry below floor is acknowledged by every group
local groups = {}
local floor = false
local floor_group = ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local gf = succ(f['last-delivered-id'])
  if f['pending'] > 0 then
    local oldest = redis.call('XPENDING', key, f['name'])[2]
    if oldest and less(oldest, first) then
      -- pending ids already deleted from the stream (a hard cut, XDEL) must not hold the floor
      -- forever: take the oldest pending entry that still exists
      local live = redis.call('XPENDING', key, f['name'], first, '+', 1)[1]
      oldest = live and live[1] or false
    end
    if oldest and less(oldest, gf) then gf = oldest end
  end
  groups[#groups + 1] = {name = f['name'], ld = f['last-delivered-id'], pending = f['pending'], passed = false}
  if not floor or less(gf, floor) then
    floor = gf
    floor_group = f['name']
  end
end

-- count entries from start up to stop (an XRANGE end), at most limit, in chunks; returns n, last id
local function count(start, stop, limit)
  local seen, last = 0, false
  while seen < limit do
    local chunk = redis.call('XRANGE', key, start, stop, 'COUNT', math.min(CHUNK, limit - seen))
    if #chunk == 0 then break end
    seen = seen + #chunk
    last = chunk[#chunk][1]
    start = '(' .. last
  end
  return seen, last
end

local removed = 0
if max_len > 0 and len > max_len then
  if not floor or less(redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1][1], floor) then
    removed = redis.call('XTRIM', key, 'MAXLEN', '~', max_len)  -- everything is acknowledged
  elseif less(first, floor) then
    -- Some acknowledged entries at the head. Cut at min(floor, the id keeping max_len entries),
    -- counting from the side that is short: the tail from floor (consumers near the end, the
    -- usual case), else the head up to floor (bounded by scan_cap).
    local probe = math.min(max_len, scan_cap)
    local tail = count(floor, '+', probe)
    if tail < probe then
      removed = redis.call('XTRIM', key, 'MAXLEN', '~', max_len)  -- cuts below floor only
    elseif probe == max_len then
      removed = redis.call('XTRIM', key, 'MINID', '~', floor)
    else
      local seen, cut = count('-', '(' .. floor, math.min(len - max_len, scan_cap))
      if cut then removed = redis.call('XTRIM', key, 'MINID', '~', succ(cut)) end
    end
  end
  len = len - removed
end

local forced, first_lost, last_lost, gap_id = 0, '', '', ''
local lost = {}
if hard > 0 and len > hard then
  local want = math.min(len - hard, scan_cap)
  local seen, start, data = 0, '-', 0  -- like count(), plus what each group had acknowledged
  local delivered = {}  -- per group: data entries cut at or below its last-delivered id
  local gaps, gap_ids = {}, {}  -- earlier gap entries being cut, and whether each group had read them
  for i = 1, #groups do delivered[i] = 0 end
  while seen < want do
    local chunk = redis.call('XRANGE', key, start, '+', 'COUNT', math.min(CHUNK, want - seen))
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      local id, f = e[1], e[2]
      local gap = false
      if f[3] == 'df-gap' then
        local ok, d = pcall(cjson.decode, f[2])
        if ok and type(d) == 'table' and type(d['df_gap']) == 'table' then gap = d['df_gap'] end
      end
      local unread = {}
      for i, g in ipairs(groups) do
        if not g.passed and less(g.ld, id) then g.passed = true end
        unread[i] = g.passed
        if not gap and not g.passed then delivered[i] = delivered[i] + 1 end
      end
      if gap then
        gaps[#gaps + 1] = {id = id, doc = gap, unread = unread}
        gap_ids[id] = true
      else
        data = data + 1
      end
    end
    if first_lost == '' then first_lost = chunk[1][1] end
    seen = seen + #chunk
    last_lost = chunk[#chunk][1]
    start = '(' .. last_lost
  end
  if seen > 0 then
    forced = redis.call('XTRIM', key, 'MINID', succ(last_lost))
    -- per group: data entries cut before it acknowledged them (new losses), plus what earlier gap
    -- entries it never read reported (carried into the new gap entry, so no report is lost)
    local unacked, first_id, entries, carried = {}, first_lost, data, false
    local merged = {}
    for i, g in ipairs(groups) do
      local n = data - delivered[i]
      local pend = {}
      if g.pending > 0 then
        for _, p in ipairs(redis.call('XPENDING', key, g.name, first_lost, last_lost, g.pending)) do
          pend[p[1]] = true
          if not gap_ids[p[1]] then n = n + 1 end
        end
      end
      local total = n
      for j, gp in ipairs(gaps) do
        local u = type(gp.doc['unacked']) == 'table' and tonumber(gp.doc['unacked'][g.name]) or nil
        if u and (gp.unread[i] or pend[gp.id]) then
          total = total + u
          carried = true
          if not merged[j] then
            merged[j] = true
            entries = entries + (tonumber(gp.doc['entries']) or 0)
            if type(gp.doc['first_id']) == 'string' and less(gp.doc['first_id'], first_id) then
              first_id = gp.doc['first_id']
            end
          end
        end
      end
      if n > 0 then
        lost[#lost + 1] = g.name
        lost[#lost + 1] = n
      end
      if total > 0 then unacked[g.name] = total end
    end
    if #lost > 0 or carried then
      local doc = cjson.decode(ARGV[4])
      local t = redis.call('TIME')
      doc['reason'] = 'max_len_hard'
      doc['stream'] = key
      doc['first_id'] = first_id
      doc['last_id'] = last_lost
      doc['entries'] = entries
      doc['unacked'] = unacked
      doc['max_len_hard'] = hard
      doc['ts_ms'] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      gap_id = redis.call('XADD', key, '*', 'df-event', cjson.encode({df_gap = doc}), 'df-gap', '1')
    end
  end
end

local out = {removed, forced, redis.call('XLEN', key), first_lost, last_lost, gap_id, floor_group}
for _, v in ipairs(lost) do out[#out + 1] = v end
return out
"""

_TRIM_SHA = hashlib.sha1(TRIM_LUA.encode()).hexdigest()


class TrimResult(msgspec.Struct):
    """What one trim of one stream did."""

    stream: str
    removed: int
    """entries removed by the soft trim (all acknowledged by every group)"""
    forced: int
    """entries cut by the hard cap"""
    length: int
    """the stream's length afterwards"""
    first_lost: str = ""
    last_lost: str = ""
    gap_id: str = ""
    floor_group: str = ""
    """the group whose unacknowledged entries hold the stream back ('' without groups)"""
    unacked: dict[str, int] = msgspec.field(default_factory=dict)
    """per group: entries cut by this hard cut that it had not acknowledged (the gap entry also
    carries the losses of earlier gap entries the group never read; these are not counted again)"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _parse_result(stream: str, reply: list[Any]) -> TrimResult:
    lost = reply[7:]
    return TrimResult(
        stream=stream, removed=int(reply[0]), forced=int(reply[1]), length=int(reply[2]),
        first_lost=_text(reply[3]), last_lost=_text(reply[4]), gap_id=_text(reply[5]),
        floor_group=_text(reply[6]),
        unacked={_text(lost[i]): int(lost[i + 1]) for i in range(0, len(lost) - 1, 2)},
    )


# --------------------------------------------------------------------------- metrics


class TrimMetrics:
    """Process-wide trim counters by (pipeline, sink[, stream[, group]]), rendered into ``/metrics``.

    Process-wide like prometheus-client's default registry: sinks are rebuilt on every pipeline
    restart and counters must survive that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trims: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.removed: Counter[tuple[str, str]] = Counter()
        self.forced: Counter[tuple[str, str, str]] = Counter()
        self.unacked: Counter[tuple[str, str, str, str]] = Counter()
        self.gaps: Counter[tuple[str, str, str]] = Counter()
        self.held: dict[tuple[str, str, str], int] = {}
        #: the counters as of the last take()
        self._sent: dict[str, Counter[Any]] = {}

    def register(self, pipeline: str, sink: str) -> None:
        """Make a sink's counters visible (as 0) before its first trim."""
        with self._lock:
            for c in (self.trims, self.errors, self.removed):
                c[pipeline, sink] += 0

    def record(self, pipeline: str, sink: str, r: TrimResult, limit: int) -> None:
        with self._lock:
            self.trims[pipeline, sink] += 1
            self.removed[pipeline, sink] += r.removed + r.forced
            if r.forced:
                self.forced[pipeline, sink, r.stream] += r.forced
            for group, n in r.unacked.items():
                self.unacked[pipeline, sink, r.stream, group] += n
            if r.gap_id:
                self.gaps[pipeline, sink, r.stream] += 1
            self.held[pipeline, sink, r.stream] = max(0, r.length - limit)

    def record_error(self, pipeline: str, sink: str) -> None:
        with self._lock:
            self.errors[pipeline, sink] += 1

    def unacked_total(self, pipeline: str, sink: str | None = None) -> int:
        with self._lock:
            return sum(n for (p, s, _st, _g), n in self.unacked.items()
                       if p == pipeline and (sink is None or s == sink))

    _COUNTERS = ("trims", "errors", "removed", "forced", "unacked", "gaps")

    def take(self) -> dict[str, dict[tuple[str, ...], int]]:
        """The counters' increments since the last take, and the held gauge's current values: what
        a writer process sends its supervisor, which adds them in (:meth:`add`)."""
        with self._lock:
            out: dict[str, dict[tuple[str, ...], int]] = {}
            sent = self._sent
            for field in self._COUNTERS:
                now: Counter[Any] = getattr(self, field)
                before = sent.get(field, Counter())
                delta = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0) or k not in before}
                if delta:
                    out[field] = delta
                sent[field] = Counter(now)
            if self.held:
                out["held"] = {k: v for k, v in self.held.items()}
            return out

    def add(self, taken: dict[str, dict[tuple[str, ...], int]]) -> None:
        with self._lock:
            for field, values in taken.items():
                if field == "held":
                    self.held.update(values)  # type: ignore[arg-type]
                else:
                    getattr(self, field).update(values)

    def families(self, pipeline: str) -> list[tuple[str, str, str, tuple[str, ...], list[tuple[tuple[str, ...], int]]]]:
        """One pipeline's figures as (name, counter|gauge, help, label names, [(labels, value)])."""
        out: list[Any] = []
        with self._lock:
            for name, kind, help_, data, names in (
                ("deltaforge_trims", "counter", "Stream trims run (max_len, max_len_hard)",
                 self.trims, ("pipeline", "sink")),
                ("deltaforge_trim_errors", "counter", "Stream trims that failed (retried later)",
                 self.errors, ("pipeline", "sink")),
                ("deltaforge_trimmed_entries", "counter", "Stream entries removed by trimming",
                 self.removed, ("pipeline", "sink")),
                ("deltaforge_trimmed_hard", "counter", "Stream entries cut by max_len_hard",
                 self.forced, ("pipeline", "sink", "stream")),
                ("deltaforge_trimmed_unacked", "counter",
                 "Entries cut by max_len_hard that a consumer group had not acknowledged (lost invalidations)",
                 self.unacked, ("pipeline", "sink", "stream", "group")),
                ("deltaforge_trim_gaps", "counter", "Gap entries written after a lossy hard cut",
                 self.gaps, ("pipeline", "sink", "stream")),
                ("deltaforge_trim_held_entries", "gauge",
                 "Entries above the stream's limit kept because a consumer group has not acknowledged them",
                 self.held, ("pipeline", "sink", "stream")),
            ):
                rows = sorted((k, v) for k, v in data.items() if k[0] == pipeline)
                if rows or kind == "counter":
                    out.append((name, kind, help_, names, rows))
        return out


#: the process's trim counters (``deltaforge.metrics`` renders them)
TRIM_METRICS = TrimMetrics()


# --------------------------------------------------------------------------- the trimmer


class _StreamState:
    __slots__ = ("held", "last", "last_held_log", "written")

    def __init__(self) -> None:
        self.written = 0  # entries since the last trim
        self.last = 0.0  # monotonic time of the last trim
        self.held = False  # above its limit after the last trim (a group holds it, or the scan cap)
        self.last_held_log = 0.0


class StreamTrimmer:
    """Batched, group-aware trims of one sink's streams. Single-threaded: owned by the sink.

    :meth:`after_commit` never raises; :meth:`trim` does (tests and tools).
    """

    #: trim a stream at most this often while it gets entries, at least every ``every_s``
    min_interval_s: float = 0.1
    every_s: float = 1.0
    #: entries a script scans at most per call (soft trim in the middle of a group, and hard cuts)
    scan_cap: int = 20_000
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0
    #: a stream held above its limit is logged at most this often
    held_log_every_s: float = 60.0

    def __init__(self, uri: RedisURI, *, max_len: int | None, max_len_hard: int | None, pipeline: str,
                 sink_id: str, path: str, client_name: str | None = None,
                 metrics: TrimMetrics = TRIM_METRICS, slot: int | None = None) -> None:
        self.uri = uri
        self.slot = slot  # on a Redis Cluster: the sink's one hash slot
        self.max_len = int(max_len or 0)
        self.max_len_hard = int(max_len_hard or 0)
        self.limit = self.max_len or self.max_len_hard
        self.every_entries = max(1, min(10_000, self.limit // 10))
        self.pipeline = pipeline
        self.sink_id = sink_id
        self.path = path
        self.client_name = client_name
        self.metrics = metrics
        self._conn: RedisConnection | None = None
        self._streams: dict[str, _StreamState] = {}
        self._next_try = 0.0
        self._retry_delay = 0.0
        self._gap_meta = msgspec.json.encode({"pipeline": pipeline, "sink": sink_id})
        metrics.register(pipeline, sink_id)

    # -- after a commit -----------------------------------------------------------------------

    def after_commit(self, streams: list[str], static: str | None = None) -> None:
        """Count the entries just committed (``streams``: one name per entry); trim the due streams.

        Never raises: trimming must not fail a commit. A failure is logged and retried later.
        """
        now = time.monotonic()
        state = self._streams
        if static is not None:
            if streams:
                st = state.get(static)
                if st is None:
                    st = state[static] = _StreamState()
                st.written += len(streams)
        else:
            for name, n in Counter(streams).items():
                st = state.get(name)
                if st is None:
                    st = state[name] = _StreamState()
                st.written += n
        if now < self._next_try:
            return
        due = [name for name, st in state.items()
               if (st.written >= self.every_entries and now - st.last >= self.min_interval_s)
               or ((st.written or st.held) and now - st.last >= self.every_s)]
        if not due:
            return
        try:
            self.trim(due)
        except Exception as e:  # a trim must never fail the commit it follows (logged, retried)
            self._drop_conn()
            self.metrics.record_error(self.pipeline, self.sink_id)
            self._retry_delay = min(max(self._retry_delay * 2, self.retry_first_s), self.retry_max_s)
            self._next_try = now + self._retry_delay
            log.warning("sink %s: trimming %s failed, retrying in %.0fs; the entries are kept meanwhile: %s",
                        self.sink_id, ", ".join(due[:5]) + (" ..." if len(due) > 5 else ""),
                        self._retry_delay, e, exc_info=not isinstance(e, DeltaForgeError))
        else:
            self._retry_delay = 0.0

    # -- one round trip -----------------------------------------------------------------------

    def trim(self, streams: list[str]) -> list[TrimResult]:
        """Trim ``streams`` now (one pipelined round trip); log and count what happened."""
        conn = self._conn
        if conn is None:
            conn = RedisConnection(self.uri, client_name=self.client_name, slot=self.slot)
            conn.connect()
            self._conn = conn
        args = (str(self.max_len), str(self.max_len_hard), str(self.scan_cap), self._gap_meta)
        cmds = [(b"EVALSHA", _TRIM_SHA, b"1", s, *args) for s in streams]
        conn.send(resp.encode_commands(cmds))
        replies = conn.read_replies(len(cmds))
        missing = [i for i, r in enumerate(replies)
                   if isinstance(r, hiredis.ReplyError) and str(r).startswith("NOSCRIPT")]
        if missing:  # first use on this server, or SCRIPT FLUSH / a restart since: load it, send again
            conn.send(resp.encode_commands([(b"SCRIPT", b"LOAD", TRIM_LUA),
                                            *(cmds[i] for i in missing)]))
            again = conn.read_replies(len(missing) + 1)
            for i, r in zip(missing, again[1:], strict=True):
                replies[i] = r
        results: list[TrimResult] = []
        first_error: DeltaForgeError | None = None
        now = time.monotonic()
        for name, reply in zip(streams, replies, strict=True):
            st = self._streams.setdefault(name, _StreamState())
            if isinstance(reply, hiredis.ReplyError):
                if first_error is None:
                    first_error = self._error(reply, name)
                continue
            r = _parse_result(name, reply)
            st.written = 0
            st.last = now
            st.held = r.length > self.limit
            if self.max_len_hard and r.length > self.max_len_hard + 1:
                st.last = 0.0  # the scan cap stopped a hard cut short: cut more at the next commit
            self.metrics.record(self.pipeline, self.sink_id, r, self.limit)
            self._report(r, st, now)
            results.append(r)
        if first_error is not None:
            raise first_error
        return results

    def _error(self, reply: Any, stream: str) -> DeltaForgeError:
        err = classify(reply, f"trim of stream {stream!r} on {self.uri.redacted()}")
        text = str(reply)
        if text.startswith("NOPERM"):
            err.hint = ("grant the sink's Redis user +evalsha +script|load +xinfo +xpending +xrange +xrevrange "
                        "+xlen +xtrim +xadd +time on its streams, or remove max_len/max_len_hard")
        elif "syntax" in text.lower() or "unknown" in text.lower():
            err.hint = "trimming needs Redis >= 6.2 (XTRIM MINID); upgrade Redis, or remove max_len/max_len_hard"
        return err

    def flush(self) -> list[TrimResult]:
        """Trim every stream this sink has written to, now (tests, tools)."""
        return self.trim(list(self._streams)) if self._streams else []

    def _report(self, r: TrimResult, st: _StreamState, now: float) -> None:
        if r.unacked:
            groups = ", ".join(f"{g} ({n})" for g, n in r.unacked.items())
            log.warning(
                "sink %s: stream %s exceeded max_len_hard %d: cut %d entries (ids %s to %s); consumer "
                "group(s) %s had not acknowledged them, so cache keys for those rows may be stale; gap "
                "entry %s marks it (fix: raise %s.max_len_hard or make the consumers keep up, and flush "
                "the affected cache keys)",
                self.sink_id, r.stream, self.max_len_hard, r.forced, r.first_lost, r.last_lost, groups,
                r.gap_id, self.path)
        elif r.gap_id:
            log.warning("sink %s: stream %s: max_len_hard %d cut an earlier gap entry before every group read "
                        "it; its report is carried by gap entry %s", self.sink_id, r.stream,
                        self.max_len_hard, r.gap_id)
        elif r.forced:
            log.info("sink %s: stream %s: max_len_hard %d cut %d acknowledged entries",
                     self.sink_id, r.stream, self.max_len_hard, r.forced)
        if st.held and r.floor_group and self.max_len and now - st.last_held_log >= self.held_log_every_s:
            st.last_held_log = now
            log.warning(
                "sink %s: stream %s holds %d entries (max_len %d) because consumer group %s has not "
                "acknowledged them; it shrinks once the group catches up (fix: start its workers, or "
                "XGROUP DESTROY %s %s if the group is dead%s)",
                self.sink_id, r.stream, r.length, self.max_len, r.floor_group, r.stream, r.floor_group,
                "" if self.max_len_hard else f"; {self.path}.max_len_hard caps the memory")
        elif not st.held:
            st.last_held_log = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop_conn()
