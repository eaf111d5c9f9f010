# cython: language_level=3
"""Binlog rows-event decoding, compiled twin of ``deltaforge.source.rowdecode``.

Contract
--------
Same API and byte-for-byte the same output as the pure module (the specification and
test oracle): ``decode_rows(schema, body, kind, present, present_after=None)`` returns
one ``(before, after)`` pair per row, row images are dicts in column order, values follow
docs/value-rendering.md. The wire layout of every type is documented once, in the pure
module's header; it is not repeated here.

Structure
---------
- A C read cursor (``Cursor``: pointer, position, end, from ``df_cursor.pxd``) over the body;
  every read goes through ``_take``, which raises on truncation instead of reading past the end.
  The digit and base64 writers come from ``df_write.pxd`` (shared with the encoders).
- A per-(table, present bitmap) plan (``_Plan``), built once and cached on the
  ``TableSchema`` under ``_df_cplans``: a C array of ``ColPlan`` (type code + metadata)
  plus tuples of the Python objects the loop needs (names, labels, codec names).
  The type code is derived from ``rowformat.column_kind`` (the one classification, shared
  with the pure twin), so both twins pick the same rendering by construction.
- One typed loop per row image; ``_value`` switches on the C type code. Integers,
  floats, DECIMAL, DATE/DATETIME2/TIME2/TIMESTAMP2, text (utf-8, cp1252, any other Python
  codec), binary (base64 written straight into an ASCII str), ENUM/SET/BIT/YEAR are
  C-level. Rare types (MySQL binary JSON, old temporal formats, unsupported types,
  charsets or metadata) call ``rowformat``'s decoder of that column (``T_PY``), the same
  function the pure twin calls. This module does not import its pure twin.

Hazards
-------
- Error messages: on any failure the row image is re-walked column by column here
  (``_locate``, as the twin does with its decoders) and the DecodeError is built by
  ``rowformat``'s message builders from positions only, so it names db.table.column,
  type and byte exactly as the twin's does.
- Host byte order does not matter: multi-byte values are assembled byte by byte.
"""

IMPLEMENTATION = "cython"

WRITE, UPDATE, DELETE = 0, 1, 2

cdef str _PLAN_CACHE = "_df_cplans"

include "rowvalues.pxi"

# --------------------------------------------------------------------------- rows


cdef dict _image(Cursor* c, _Plan plan, object body):
    cdef const unsigned char* nulls = _take(c, plan.null_bytes)
    cdef dict row = {}
    cdef Py_ssize_t i
    cdef tuple names = plan.names
    for i in range(plan.n):
        if (nulls[i >> 3] >> (i & 7)) & 1:
            row[names[i]] = None
        else:
            row[names[i]] = _value(c, &plan.cols[i], plan, i, body)
    return row


cdef object _locate(object schema, _Plan plan, bytes data, Py_ssize_t start):
    """Slow path after a failure: re-walk the image column by column to name the culprit
    (the twin's ``_locate`` with our decoders; messages from rowformat, positions only)."""
    cdef Cursor c
    cdef Py_ssize_t i, pos
    cdef const unsigned char* nulls
    c.buf = <const unsigned char*>(<char*>data)
    c.end = len(data)
    c.pos = start + plan.null_bytes
    if c.pos > c.end:
        return _F.truncated_nulls(schema, start, c.end)
    nulls = c.buf + start
    for i in range(plan.n):
        if (nulls[i >> 3] >> (i & 7)) & 1:
            continue
        pos = c.pos
        col = plan.specs[i]
        try:
            _value(&c, &plan.cols[i], plan, i, data)
        except DecodeError as err:
            return _F.value_error(schema, col, pos, err.detail, err.hint)
        except (IndexError, struct.error):
            return _F.truncated_value(schema, col, pos, c.end)
        except Exception as err:  # any other failure here is a malformed value
            return _F.value_error(schema, col, pos, f"malformed value ({type(err).__name__})")
    return _F.malformed_image(schema, start)


def decode_rows(schema, body, kind, present, present_after=None):
    """Decode every row of one rows-event body; see deltaforge.source.rowdecode."""
    if kind not in (WRITE, UPDATE, DELETE):
        raise _F.unknown_kind(schema, kind)
    cdef int k = kind
    cdef _Plan plan = _get_plan(schema, present)
    cdef _Plan plan_after = plan
    if k == UPDATE:
        plan_after = _get_plan(schema, present_after if present_after is not None else present)
    if type(body) is not bytes:
        body = bytes(body)
    cdef bytes data = body
    cdef Cursor c
    c.buf = <const unsigned char*>(<char*>data)
    c.pos = 0
    c.end = len(data)
    cdef list out = []
    cdef Py_ssize_t start
    cdef _Plan cur
    cdef dict row, after
    if c.end and plan.n == 0 and plan_after.n == 0:
        raise _F.no_columns(schema, c.end)
    while c.pos < c.end:
        start = c.pos
        cur = plan
        try:
            row = _image(&c, plan, data)
            if k == WRITE:
                out.append((None, row))
            elif k == DELETE:
                out.append((row, None))
            else:
                start = c.pos
                cur = plan_after
                after = _image(&c, plan_after, data)
                out.append((row, after))
        except DecodeError as err:
            raise _locate(schema, cur, data, start) from err
        except _CAUGHT as err:
            raise _locate(schema, cur, data, start) from err
    return out
