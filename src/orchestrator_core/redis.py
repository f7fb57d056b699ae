# A shared admission queue on Redis: the same API and results as ``Queue``, for every
# process and host that names the same queue.
#
# Keys of queue NAME (one hash tag, so one cluster slot):
#   oc:{NAME}:q0 / q1      ZSET job_id -> per-queue sequence (FIFO per priority; a redelivered
#                          job gets a negative sequence, so it is back at the head)
#   oc:{NAME}:lru0 / lru1  ZSET job_id -> touch counter (DROP_LRU's victim is the lowest)
#   oc:{NAME}:task         HASH job_id -> "<class 1|2>|<enqueued_at>|<redeliveries>|<encoded task>"
#                          (wire format v1) while the job is queued or leased
#   oc:{NAME}:leases       ZSET job_id -> lease deadline (server ms)
#   oc:{NAME}:state        HASH config, closed flag, id / sequence / touch counters, wait sum
#   oc:{NAME}:ctr          HASH lifetime counters; oc:{NAME}:win, :life wait histograms
#   oc:{NAME}:wake         LIST wake-up tokens for blocked consumers (BLPOP)
#   oc:{NAME}:dlq          LIST dead letters (JSON)
#   oc:{NAME}:replay(t)    HASH / ZSET replies of recent calls, so a retried call is answered
#                          as the first one was
# Every operation is one call of one Lua script: the decision and its effects are atomic.
"""A bounded admission queue shared through Redis: ``RedisQueue`` and ``AsyncRedisQueue``.

Install the extra: ``pip install "orchestrator-core[redis]"`` (redis-py with hiredis).
Every process and host that builds a ``RedisQueue`` with the same Redis server and the
same ``name`` uses one queue, with the API and the results of the in-process ``Queue``:
``enqueue`` returns ``Accepted`` or ``Rejected`` (same reasons, same messages), DROP_LRU
reports the evicted ``Job`` to the caller whose task evicted it, ``dequeue`` hands out
INTERACTIVE before BATCH and FIFO within a priority, and can block without polling.

Delivery is **at-least-once**: a dequeued job is *leased* for ``lease_s`` seconds and stays
stored until ``complete(job_id)`` acknowledges it. If the lease expires first (the
consumer died, hung or lost its connection), the job goes back to the head of its
priority class and is delivered again (``lease_stats().redelivered``); after
``max_redeliveries`` redeliveries the next expiry moves it to the dead-letter list
(``dead_letters()``) instead. A job can therefore be delivered more than once; make its
processing idempotent or check ``deliveries``. ``lease_s=None`` turns leases off:
``dequeue`` removes the job at once (at-most-once delivery).

The guarantee holds as long as Redis keeps what it acknowledged: run it with
``appendonly yes`` and ``appendfsync always`` (``everysec`` may lose the last second of
operations on a crash of the host; RDB snapshots alone lose everything since the last
snapshot). Failover to a replica that had not received the latest writes loses them too.

Tasks cross the wire as JSON (see ``encode_task``): the payload must be JSON-encodable
and comes back as JSON decodes it (tuples become lists, non-string keys strings).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Union

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as _RedisTimeoutError

from . import Accepted, Job, Rejected, Task, _core_py
from ._core_py import _retry_after
from ._stats import WAIT_BUCKET_BOUNDS_MS, QueueMetrics, build_metrics
from ._types import AdmissionPolicy, Priority, RejectionReason
from ._validate import (
    call_clock,
    check_count,
    check_job_id,
    check_queue_args,
    check_timeout,
)

__all__ = [
    "WIRE_VERSION",
    "AsyncRedisQueue",
    "DeadLetter",
    "LeaseStats",
    "QueueUnavailableError",
    "RedisQueue",
    "decode_task",
    "encode_task",
]

#: Version of the task encoding written by this release (the ``"v"`` field).
WIRE_VERSION: Final = 1


def _is_task(value: object) -> bool:
    """A ``Task`` of either engine (the compiled one only if something loaded it)."""
    cls = type(value)
    if cls is Task or cls is _core_py.Task:
        return True
    core_c = sys.modules.get("orchestrator_core._core_c")
    return core_c is not None and cls is getattr(core_c, "Task", None)


SyncClient = Union[redis.Redis, "redis.RedisCluster"]
AsyncClient = Union[redis.asyncio.Redis, "redis.asyncio.RedisCluster"]

_POLICY_CODE: Final = {AdmissionPolicy.REJECT_NEW: 0, AdmissionPolicy.DROP_LRU: 1, AdmissionPolicy.FAIL_FAST: 2}
_PRIORITY_INDEX: Final = {Priority.INTERACTIVE: 1, Priority.BATCH: 2}
_REASONS: Final = tuple(RejectionReason)
# Refusal codes of the script (1..5 as in the engines, 6 = the id is leased to a consumer).
_CODE_REASON: Final = {
    1: RejectionReason.QUEUE_FULL,
    2: RejectionReason.INVALID_REQUEST,
    3: RejectionReason.POLICY_VIOLATION,
    4: RejectionReason.QUEUE_CLOSED,
    5: RejectionReason.QUEUE_FULL,
    6: RejectionReason.INVALID_REQUEST,
}
_ENQUEUE_CHUNK: Final = 256
# One encoder for every task (``json.dumps`` with options would build one per call).
_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_DECODER: Final = json.JSONDecoder()
_ID_COUNTER_MAX: Final = 2**53  # Lua numbers are doubles

# ---------------------------------------------------------------------------------------
# The server-side script. One script, the operation in ARGV[1], so every call is one
# atomic EVALSHA; its common arguments are ARGV[2..6]: now ('' = server time), lease ms
# (0 = no leases), max redeliveries, replay window ms, the call's nonce ('' = none).
_SCRIPT = r"""
local KQ = {KEYS[1], KEYS[2]}
local KLRU = {KEYS[3], KEYS[4]}
local KTASK, KLEASE, KSTATE, KCTR = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local KWIN, KLIFE, KWAKE, KDLQ = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local KREPLAY, KREPLAYT = KEYS[13], KEYS[14]

local op = ARGV[1]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[2] ~= '' then now = tonumber(ARGV[2]) end
local lease_ms = tonumber(ARGV[3])
local max_redeliveries = tonumber(ARGV[4])
local replay_ms = tonumber(ARGV[5])
local nonce = ARGV[6]

local WINDOW = 10  -- seconds in the window
local SLOTS = 11  -- the window's seconds and the one in progress
local NBUCKETS = 94
local CHUNK = 1000
local LN2 = math.log(2)

local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end

-- A job's value in KTASK: "<class 1|2>|<enqueued_at>|<redeliveries>|<encoded task>".
local function job_fields(v)
  local p, at, r, rest = string.match(v, '^(%d)|([^|]*)|(%d+)|()')
  return tonumber(p), at, tonumber(r), string.sub(v, rest)
end
local function depth() return redis.call('ZCARD', KQ[1]) + redis.call('ZCARD', KQ[2]) end
local function is_closed() return redis.call('HGET', KSTATE, 'closed') == '1' end

-- Apply cmd(key, <items i..j>) over a list in chunks (unpack has a stack limit).
local function chunked(cmd, key, items, step)
  for i = 1, #items, step do
    redis.call(cmd, key, unpack(items, i, math.min(i + step - 1, #items)))
  end
end

-- Counter increments, written once at the end of the call.
local incr = {}
local function bump(key, field, n)
  local h = incr[key]
  if not h then
    h = {}
    incr[key] = h
  end
  h[field] = (h[field] or 0) + n
end

-- Wake-up tokens for blocked consumers: at most one per queued job; none once the queue is
-- empty, except one that stays while it is closed, so every blocked consumer wakes in turn.
local woken = 0
local function wake_flush()
  if woken == 0 then return end
  local d = depth()
  local n = math.min(woken, d)
  woken = 0
  if n == 0 then return end
  local tokens = {}
  for i = 1, n do tokens[i] = 'j' end
  if redis.call('RPUSH', KWAKE, unpack(tokens)) > d then redis.call('LTRIM', KWAKE, int(-d), '-1') end
end
local function wake_after_remove()
  if depth() == 0 then
    redis.call('DEL', KWAKE)
    if is_closed() then redis.call('RPUSH', KWAKE, 'c') end
  end
end

-- Replies of recent calls by nonce: a call retried after a lost reply gets the first answer.
local replay_key = false
if nonce ~= '' and replay_ms > 0 then
  local old = redis.call('ZRANGEBYSCORE', KREPLAYT, '-inf', int(now_ms - replay_ms), 'LIMIT', 0, 256)
  if #old > 0 then
    redis.call('HDEL', KREPLAY, unpack(old))
    redis.call('ZREM', KREPLAYT, unpack(old))
  end
  replay_key = nonce
end
local function replay_get()
  return replay_key and redis.call('HGET', KREPLAY, replay_key)
end
local function replay_put(value)
  if replay_key then
    redis.call('HSET', KREPLAY, replay_key, value)
    redis.call('ZADD', KREPLAYT, int(now_ms), replay_key)
  end
end

-- Sliding window of one-second slots and wait histograms (as in the engines).
local slot = false
local function cur_slot()
  if not slot then
    local sec = math.floor(now)
    slot = sec % SLOTS
    if redis.call('HGET', KWIN, 's' .. slot) ~= int(sec) then
      local f = {}
      for b = 0, NBUCKETS - 1 do f[b + 1] = 'h' .. slot .. '.' .. b end
      redis.call('HDEL', KWIN, unpack(f))
      redis.call('HSET', KWIN, 's' .. slot, int(sec), 'e' .. slot, '0', 'd' .. slot, '0', 'm' .. slot, '0')
    end
  end
  return slot
end
local BOUNDS = false
local function bucket(w)
  if not (w > 0.1) then return 0 end
  -- log2 as (e - 1) + log2(2m) with x = m * 2^e: exact for powers of two and as close to the
  -- engines' math.log2 as double rounding allows (log(x) / log(2) is not, next to a bound).
  local m, e = math.frexp(w / 0.1)
  local idx = math.ceil(((e - 1) + math.log(2 * m) / LN2) * 4.0)
  if idx >= NBUCKETS then idx = NBUCKETS - 1 end
  -- Settle it against the engines' bounds table (bucket i holds (bound[i-1], bound[i]]).
  if not BOUNDS then BOUNDS = {__BOUNDS__} end
  if idx < NBUCKETS - 1 and w > BOUNDS[idx + 1] then
    idx = idx + 1
  elseif idx > 0 and w <= BOUNDS[idx] then
    idx = idx - 1
  end
  return idx
end
local wait_max, wait_sum, wait_n, wait_hist = false, false, 0, {}
local function record_wait(w)
  local idx = bucket(w)
  wait_hist[idx] = (wait_hist[idx] or 0) + 1
  wait_n = wait_n + 1
  if not wait_max or w > wait_max then wait_max = w end
  if not wait_sum then wait_sum = tonumber(redis.call('HGET', KSTATE, 'wait_sum')) or 0 end
  wait_sum = wait_sum + w  -- one by one, in dequeue order: the same sum as the engines'
end
local function window()
  local cur = math.floor(now)
  local c = redis.call('HMGET', KSTATE, 'created', 'created_at')
  local created, created_at = tonumber(c[1]), tonumber(c[2])
  if not created then
    created, created_at = math.floor(now), now
    redis.call('HSET', KSTATE, 'created', int(created), 'created_at', fmt(now))
  end
  local lo = math.max(cur - WINDOW, created)
  local f = {}
  for i = 0, SLOTS - 1 do
    f[3 * i + 1] = 's' .. i
    f[3 * i + 2] = 'e' .. i
    f[3 * i + 3] = 'd' .. i
  end
  local v = redis.call('HMGET', KWIN, unpack(f))
  local slots = {}
  local enq, deq = 0, 0
  for i = 0, SLOTS - 1 do
    local s = tonumber(v[3 * i + 1])
    if s and lo <= s and s < cur then
      slots[#slots + 1] = i
      enq = enq + tonumber(v[3 * i + 2])
      deq = deq + tonumber(v[3 * i + 3])
    end
  end
  -- From the queue's creation when that is later than cur - WINDOW (as the engines do).
  local win = cur - math.max(cur - WINDOW, created_at)
  if not (win > 0) then win = 0 end
  return enq, deq, win, slots
end

local function finish()
  if wait_n > 0 then
    local s = cur_slot()
    bump(KWIN, 'd' .. s, wait_n)
    for idx, n in pairs(wait_hist) do
      bump(KWIN, 'h' .. s .. '.' .. idx, n)
      bump(KLIFE, tostring(idx), n)
    end
    wait_n, wait_hist = 0, {}
  end
  for key, h in pairs(incr) do
    for field, n in pairs(h) do redis.call('HINCRBY', key, field, n) end
  end
  incr = {}
  if wait_sum then
    redis.call('HSET', KSTATE, 'wait_sum', fmt(wait_sum))
    if wait_max > tonumber(redis.call('HGET', KWIN, 'm' .. slot)) then
      redis.call('HSET', KWIN, 'm' .. slot, fmt(wait_max))
    end
    wait_sum = false
  end
  wake_flush()
end

-- Expired leases: back to the head of their class, or to the dead-letter list.
local function reclaim()
  if lease_ms == 0 then return end
  local expired = redis.call('ZRANGEBYSCORE', KLEASE, '-inf', int(now_ms), 'LIMIT', 0, 512)
  if #expired == 0 then return end
  redis.call('ZREM', KLEASE, unpack(expired))
  for i = #expired, 1, -1 do  -- the earliest expiry ends up first
    local id = expired[i]
    local v = redis.call('HGET', KTASK, id)
    if v then
      local p, at, r, blob = job_fields(v)
      if r >= max_redeliveries then
        redis.call('RPUSH', KDLQ, '{"v":1,"job_id":' .. cjson.encode(id) .. ',"deliveries":' .. int(r + 1) ..
          ',"enqueued_at":' .. at .. ',"dead_at_ms":' .. int(now_ms) .. ',"task":' .. blob .. '}')
        redis.call('HDEL', KTASK, id)
        bump(KCTR, 'dead_lettered', 1)
      else
        redis.call('HSET', KTASK, id, p .. '|' .. at .. '|' .. int(r + 1) .. '|' .. blob)
        redis.call('ZADD', KQ[p], int(redis.call('HINCRBY', KSTATE, 'head', -1)), id)
        redis.call('ZADD', KLRU[p], int(redis.call('HINCRBY', KSTATE, 'tick', 1)), id)
        bump(KCTR, 'redelivered', 1)
        woken = woken + 1
      end
    end
  end
end

if op == 'reg' then
  local cfg = redis.call('HGET', KSTATE, 'config')
  if cfg then return cfg end
  redis.call('HSET', KSTATE, 'config', ARGV[7])
  if redis.call('HSETNX', KSTATE, 'created', int(math.floor(now))) == 1 then
    redis.call('HSET', KSTATE, 'created_at', fmt(now))
  end
  return ARGV[7]
end

reclaim()

local function enqueue()
  local prev = replay_get()
  if prev then return cjson.decode(prev) end
  local capacity, policy, limit, prefix = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
  local st = redis.call('HMGET', KSTATE, 'closed', 'seq', 'tick', 'ids')
  local closed = st[1] == '1'
  local seq, tick, ids = tonumber(st[2]) or 0, tonumber(st[3]) or 0, tonumber(st[4]) or 0
  local d = {redis.call('ZCARD', KQ[1]), redis.call('ZCARD', KQ[2])}
  local at_s = fmt(now)
  local out = {}
  local accepted = 0
  for i = 1, tonumber(ARGV[11]) do
    local b = 11 + (i - 1) * 5
    local jid, own, p, max_tokens, blob = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
      tonumber(ARGV[b + 4]), ARGV[b + 5]
    local code, ahead, vp = 0, 0, false
    if closed then code = 4
    elseif limit > 0 and max_tokens > limit then code = 3
    elseif jid ~= '' and redis.call('HEXISTS', KTASK, jid) == 1 then
      if redis.call('ZSCORE', KLEASE, jid) then code = 6 else code = 2 end
    else
      local total = d[1] + d[2]
      if policy == 2 then
        if p == 1 then ahead = d[1] else ahead = total end
        if ahead > 0 then code = 5 elseif total >= capacity then code = 1 end
      elseif total >= capacity then
        if policy == 1 and d[2] > 0 then vp = 2
        elseif policy == 1 and p == 1 then vp = 1
        else code = 1 end
      end
    end
    if code ~= 0 then
      local reason = code
      if code == 5 then reason = 1 elseif code == 6 then reason = 2 end
      bump(KCTR, 'rejected' .. reason, 1)
      local deq, win = 0, 0
      if code == 1 or code == 5 then
        local _
        _, deq, win = window()
      end
      out[i] = {0, code, ahead, deq, fmt(win)}
    else
      local reply = {1, '', 0, false, false, false, false}
      if vp then
        local vid = redis.call('ZRANGE', KLRU[vp], 0, 0)[1]
        local _, vat, _, vblob = job_fields(redis.call('HGET', KTASK, vid))
        redis.call('ZREM', KQ[vp], vid)
        redis.call('ZREM', KLRU[vp], vid)
        redis.call('HDEL', KTASK, vid)
        d[vp] = d[vp] - 1
        bump(KCTR, 'evicted', 1)
        reply[4] = vid
        reply[5] = vblob
        reply[6] = vat
        reply[7] = fmt((now - tonumber(vat)) * 1000.0)
      end
      if jid == '' then
        repeat
          ids = ids + 1
          jid = prefix .. '-' .. string.format('%x', ids)
        until redis.call('HEXISTS', KTASK, jid) == 0
      elseif own > ids then
        ids = own
      end
      local pos = d[1]
      if p == 2 then pos = d[1] + d[2] end
      seq = seq + 1
      tick = tick + 1
      redis.call('ZADD', KQ[p], int(seq), jid)
      redis.call('ZADD', KLRU[p], int(tick), jid)
      redis.call('HSET', KTASK, jid, p .. '|' .. at_s .. '|0|' .. blob)
      d[p] = d[p] + 1
      accepted = accepted + 1
      reply[2] = jid
      reply[3] = pos
      out[i] = reply
    end
  end
  if accepted > 0 then
    redis.call('HSET', KSTATE, 'seq', int(seq), 'tick', int(tick), 'ids', int(ids))
    bump(KCTR, 'accepted', accepted)
    bump(KWIN, 'e' .. cur_slot(), accepted)
    woken = woken + accepted
    replay_put(cjson.encode(out))
  end
  return out
end

local function dequeue()
  local out = {0, -1}
  local prev = replay_get()
  if prev then
    local lite = cjson.decode(prev)
    for i = 1, #lite, 3 do
      local v = redis.call('HGET', KTASK, lite[i])
      if v then
        local _, _, _, blob = job_fields(v)
        out[#out + 1] = lite[i]
        out[#out + 1] = blob
        out[#out + 1] = lite[i + 1]
        out[#out + 1] = lite[i + 2]
      end
    end
    return out
  end
  local want = tonumber(ARGV[7])
  local lite = {}
  local deadline = int(now_ms + lease_ms)
  for p = 1, 2 do
    if want > 0 then
      local popped = redis.call('ZPOPMIN', KQ[p], want)
      local n = #popped / 2
      if n > 0 then
        want = want - n
        local ids = {}
        for i = 1, n do ids[i] = popped[2 * i - 1] end
        chunked('ZREM', KLRU[p], ids, CHUNK)
        local leases = {}
        for c = 1, n, CHUNK do
          local values = redis.call('HMGET', KTASK, unpack(ids, c, math.min(c + CHUNK - 1, n)))
          for j = 1, #values do
            local id = ids[c + j - 1]
            local _, at, _, blob = job_fields(values[j])
            local w = (now - tonumber(at)) * 1000.0
            record_wait(w)
            local ws = fmt(w)
            out[#out + 1] = id
            out[#out + 1] = blob
            out[#out + 1] = at
            out[#out + 1] = ws
            lite[#lite + 1] = id
            lite[#lite + 1] = at
            lite[#lite + 1] = ws
            leases[#leases + 1] = deadline
            leases[#leases + 1] = id
          end
        end
        if lease_ms > 0 then chunked('ZADD', KLEASE, leases, 2 * CHUNK) else chunked('HDEL', KTASK, ids, CHUNK) end
        bump(KCTR, 'dequeued', n)
      end
    end
  end
  wake_after_remove()
  if #out == 2 then
    if is_closed() then out[1] = 1 end
    if lease_ms > 0 then
      local nx = redis.call('ZRANGE', KLEASE, 0, 0, 'WITHSCORES')
      if #nx > 0 then out[2] = math.max(1, tonumber(nx[2]) - now_ms) end
    end
  elseif lease_ms > 0 then
    replay_put(cjson.encode(lite))
  end
  return out
end

local function drain()
  local prev = replay_get()
  if prev then return cjson.decode(prev) end
  local out = {}
  for p = 1, 2 do
    local ids = redis.call('ZRANGE', KQ[p], 0, -1)
    for c = 1, #ids, CHUNK do
      local values = redis.call('HMGET', KTASK, unpack(ids, c, math.min(c + CHUNK - 1, #ids)))
      for j = 1, #values do
        local _, at, _, blob = job_fields(values[j])
        out[#out + 1] = ids[c + j - 1]
        out[#out + 1] = blob
        out[#out + 1] = at
        out[#out + 1] = fmt((now - tonumber(at)) * 1000.0)
      end
    end
    chunked('HDEL', KTASK, ids, CHUNK)
    redis.call('DEL', KQ[p], KLRU[p])
  end
  if #out > 0 then
    bump(KCTR, 'drained', #out / 4)
    replay_put(cjson.encode(out))
  end
  wake_after_remove()
  return out
end

local function cancel()
  if replay_get() then return 1 end
  local id = ARGV[7]
  for p = 1, 2 do
    if redis.call('ZREM', KQ[p], id) == 1 then
      redis.call('ZREM', KLRU[p], id)
      redis.call('HDEL', KTASK, id)
      bump(KCTR, 'cancelled', 1)
      wake_after_remove()
      replay_put('1')
      return 1
    end
  end
  return 0
end

local function complete()
  local prev = replay_get()
  if prev then return tonumber(prev) end
  local ids, seen = {}, {}
  for i = 7, #ARGV do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      ids[#ids + 1] = ARGV[i]
    end
  end
  local done = {}
  for c = 1, #ids, CHUNK do
    local scores = redis.call('ZMSCORE', KLEASE, unpack(ids, c, math.min(c + CHUNK - 1, #ids)))
    for j = 1, #scores do
      if scores[j] then done[#done + 1] = ids[c + j - 1] end
    end
  end
  if #done > 0 then
    chunked('ZREM', KLEASE, done, CHUNK)
    chunked('HDEL', KTASK, done, CHUNK)
    bump(KCTR, 'completed', #done)
    replay_put(int(#done))
  end
  return #done
end

local function renew()
  if redis.call('ZSCORE', KLEASE, ARGV[7]) then
    redis.call('ZADD', KLEASE, 'XX', int(now_ms + tonumber(ARGV[8])), ARGV[7])
    return 1
  end
  return 0
end

local function touch()
  for p = 1, 2 do
    if redis.call('ZSCORE', KQ[p], ARGV[7]) then
      redis.call('ZADD', KLRU[p], int(redis.call('HINCRBY', KSTATE, 'tick', 1)), ARGV[7])
      return 1
    end
  end
  return 0
end

local function position()
  local r = redis.call('ZRANK', KQ[1], ARGV[7])
  if r then return r end
  r = redis.call('ZRANK', KQ[2], ARGV[7])
  if r then return r + redis.call('ZCARD', KQ[1]) end
  return -1
end

local function metrics()
  local enq, deq, win, slots = window()
  local hist = {}
  for b = 1, NBUCKETS do hist[b] = 0 end
  local wmax = 0
  local fields = {}
  for _, s in ipairs(slots) do
    for b = 0, NBUCKETS - 1 do fields[b + 1] = 'h' .. s .. '.' .. b end
    fields[NBUCKETS + 1] = 'm' .. s
    local v = redis.call('HMGET', KWIN, unpack(fields))
    for b = 1, NBUCKETS do hist[b] = hist[b] + (tonumber(v[b]) or 0) end
    wmax = math.max(wmax, tonumber(v[NBUCKETS + 1]))
  end
  fields = {}
  for b = 0, NBUCKETS - 1 do fields[b + 1] = tostring(b) end
  local lv = redis.call('HMGET', KLIFE, unpack(fields))
  local life = {}
  for b = 1, NBUCKETS do life[b] = tonumber(lv[b]) or 0 end
  local oldest = false
  for p = 1, 2 do
    local head = redis.call('ZRANGE', KQ[p], 0, 0)[1]
    if head then
      local _, at = job_fields(redis.call('HGET', KTASK, head))
      if not oldest or tonumber(at) < tonumber(oldest) then oldest = at end
    end
  end
  local c = redis.call('HMGET', KCTR, 'accepted', 'rejected1', 'rejected2', 'rejected3', 'rejected4', 'evicted',
    'cancelled', 'dequeued', 'drained')
  for i = 1, #c do c[i] = tonumber(c[i]) or 0 end
  local st = redis.call('HMGET', KSTATE, 'wait_sum', 'closed')
  return {fmt(now), redis.call('ZCARD', KQ[1]), redis.call('ZCARD', KQ[2]), c, oldest, fmt(win), enq, deq, hist,
    fmt(wmax), life, st[1] or '0', st[2] == '1' and 1 or 0}
end

local function lease_stats()
  local c = redis.call('HMGET', KCTR, 'completed', 'redelivered', 'dead_lettered')
  local next_ms = -1
  local nx = redis.call('ZRANGE', KLEASE, 0, 0, 'WITHSCORES')
  if #nx > 0 then next_ms = math.max(0, tonumber(nx[2]) - now_ms) end
  return {redis.call('ZCARD', KLEASE), tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
    redis.call('LLEN', KDLQ), next_ms}
end

local ops = {
  enq = enqueue,
  deq = dequeue,
  drain = drain,
  cancel = cancel,
  complete = complete,
  renew = renew,
  touch = touch,
  position = position,
  metrics = metrics,
  leases = lease_stats,
  contains = function()
    if redis.call('ZSCORE', KQ[1], ARGV[7]) or redis.call('ZSCORE', KQ[2], ARGV[7]) then return 1 end
    return 0
  end,
  snapshot = function()
    local which = tonumber(ARGV[7])
    if which > 0 then return redis.call('ZRANGE', KQ[which], 0, -1) end
    local out = redis.call('ZRANGE', KQ[1], 0, -1)
    for _, id in ipairs(redis.call('ZRANGE', KQ[2], 0, -1)) do out[#out + 1] = id end
    return out
  end,
  lru = function() return redis.call('ZRANGE', KLRU[tonumber(ARGV[7])], 0, -1) end,
  depth = function() return {redis.call('ZCARD', KQ[1]), redis.call('ZCARD', KQ[2])} end,
  close = function()
    redis.call('HSET', KSTATE, 'closed', '1')
    redis.call('RPUSH', KWAKE, 'c')
    return 1
  end,
  closed = function() return is_closed() and 1 or 0 end,
  leased = function() return redis.call('ZRANGE', KLEASE, 0, -1) end,
  dlq = function() return redis.call('LRANGE', KDLQ, 0, -1) end,
  dlq_clear = function()
    local n = redis.call('LLEN', KDLQ)
    redis.call('DEL', KDLQ)
    return n
  end,
}

local handler = ops[op]
if not handler then return redis.error_reply('orchestrator_core.redis: unknown operation ' .. tostring(op)) end
local result = handler()
finish()
return result
"""
# The engines' bucket bounds, written into the script as exact literals.
_SCRIPT = _SCRIPT.replace("__BOUNDS__", ", ".join(repr(b) for b in WAIT_BUCKET_BOUNDS_MS))
_SCRIPT_SHA: Final = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_KEY_SUFFIXES: Final = (
    "q0",
    "q1",
    "lru0",
    "lru1",
    "task",
    "leases",
    "state",
    "ctr",
    "win",
    "life",
    "wake",
    "dlq",
    "replay",
    "replayt",
)
_NKEYS: Final = len(_KEY_SUFFIXES)


# ---------------------------------------------------------------------------------------
# Public helpers


class QueueUnavailableError(_RedisConnectionError):
    """Redis could not be reached, or its reply was lost, during a queue operation.

    Raised instead of any answer: never a guess such as "empty" or "rejected". The queue
    works again as soon as Redis answers. A command whose reply was lost may have been
    applied. redis-py's own retries of a command get the first attempt's answer (see
    ``replay_window_s``), but a call the caller repeats after this error is a new command:
    a repeated ``enqueue`` may admit the task a second time, unless it carries a ``job_id``
    (then the repeat is refused as ``INVALID_REQUEST`` if the first one was admitted). A
    subclass of redis-py's ``ConnectionError``.
    """


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """Counters of the at-least-once machinery (``RedisQueue.lease_stats()``).

    With leases, the engine counters balance as
    ``accepted + redelivered == dequeued + cancelled + evicted + drained + depth``,
    and every dequeued job is eventually ``completed``, redelivered or dead-lettered.
    """

    #: Jobs dequeued and not yet completed whose lease has not expired (or not yet been noticed).
    leased: int
    #: Jobs acknowledged with ``complete``.
    completed: int
    #: Expired leases whose job went back to the head of its class.
    redelivered: int
    #: Expired leases whose job had used up its redeliveries and went to the dead-letter list.
    dead_lettered: int
    #: Entries in the dead-letter list now.
    dead_letter_depth: int
    #: Milliseconds until the next lease expires (server clock), or None without leases.
    next_expiry_ms: int | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job whose lease expired once more than ``max_redeliveries`` allowed."""

    #: The job's id.
    job_id: str
    #: The task, decoded.
    task: Any
    #: When it was admitted, in seconds on the queue's clock.
    enqueued_at: float
    #: How many times it was delivered.
    deliveries: int
    #: When it was moved to the list, in milliseconds of the Redis server's clock (Unix time).
    dead_at_ms: int


#: Task fields the Redis backend does not carry (issue-10 features of the in-process Queue).
_IN_PROCESS_ONLY = ("tenant", "max_wait_ms", "prompt_tokens")


def encode_task(task: Any) -> str:
    """Encode a ``Task`` in the wire format (JSON, version ``WIRE_VERSION``).

    ``{"v": 1, "model": str, "max_tokens": int, "session_id": str|null,
    "priority": "interactive"|"batch", "job_id": str|null, "payload": <JSON value>}``,
    ASCII only. Raises ``TypeError`` (or ``ValueError`` for NaN, infinities and circular
    references) naming ``payload`` when the payload cannot be encoded, and ``ValueError``
    naming the field for a task with a ``tenant``, ``max_wait_ms`` or ``prompt_tokens``,
    which this backend does not support.
    """
    if not _is_task(task):
        raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
    for field in _IN_PROCESS_ONLY:
        value = getattr(task, field)
        if value is not None:
            # Dropping it would silently lose the deadline, the fairness or the token count.
            raise ValueError(
                f"{field} is not supported by the Redis backend (deadlines, tenants and token "
                f"budgets are the in-process Queue's), got {field}={value!r}"
            )
    job_id = task.job_id
    if job_id is not None:
        try:
            job_id.encode()
        except UnicodeEncodeError:
            raise ValueError(f"job_id must be encodable as UTF-8 to cross to Redis, got {job_id!r}") from None
    try:
        return _ENCODER.encode(
            {
                "v": WIRE_VERSION,
                "model": task.model,
                "max_tokens": task.max_tokens,
                "session_id": task.session_id,
                "priority": task.priority.value,
                "job_id": job_id,
                "payload": task.payload,
            }
        )
    except TypeError as exc:
        raise TypeError(
            f"payload must be JSON-encodable to cross to Redis ({exc}), got {task.payload!r:.200}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(
            f"payload must be JSON-encodable to cross to Redis ({exc}), got {task.payload!r:.200}"
        ) from None


def decode_task(data: bytes | str) -> Any:
    """Decode a task written by ``encode_task`` (any version this release reads: 1)."""
    return _task_from(_DECODER.decode(data.decode() if isinstance(data, bytes) else data))


def _task_from(obj: Any) -> Any:
    version = obj.get("v") if isinstance(obj, dict) else None
    if version != WIRE_VERSION:
        raise ValueError(f"task encoding version must be {WIRE_VERSION}, got {version!r} (in {str(obj)[:200]})")
    return Task(
        obj["model"],
        obj["max_tokens"],
        obj["session_id"],
        priority=obj["priority"],
        job_id=obj["job_id"],
        payload=obj["payload"],
    )


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_name(name: object) -> str:
    name = check_job_id(name, "name")
    if "{" in name or "}" in name:
        raise ValueError(f"name must not contain '{{' or '}}' (it becomes the Redis hash tag), got {name!r}")
    return name


# ---------------------------------------------------------------------------------------
# The part shared by the two clients: arguments, replies, results


class _RedisQueueBase:
    __slots__ = (
        "__weakref__",
        "_block_cap_s",
        "_capacity",
        "_clock",
        "_config",
        "_keys",
        "_lease_ms",
        "_limit",
        "_max_redeliveries",
        "_name",
        "_owns_client",
        "_policy",
        "_policy_code",
        "_pool_id",
        "_prefix",
        "_prefix_dash",
        "_replay_ms",
        "_wake_key",
    )

    _block_cap_s: float | None
    _owns_client: bool
    _wake_key: str

    def _setup(
        self,
        name: str,
        capacity: int,
        policy: AdmissionPolicy | str,
        pool_id: str | None,
        clock: Callable[[], float] | None,
        max_tokens_limit: int | None,
        id_prefix: str | None,
        lease_s: float | None,
        max_redeliveries: int,
        replay_window_s: float,
    ) -> None:
        name = _check_name(name)
        cap, pol, pool, clk, limit, prefix = check_queue_args(
            capacity, policy, name if pool_id is None else pool_id, clock, max_tokens_limit, id_prefix
        )
        if lease_s is None:
            lease_ms = 0
        else:
            if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)):
                raise TypeError(f"lease_s must be a number of seconds or None, got {lease_s!r}")
            if not (0.001 <= lease_s <= 1e8):
                raise ValueError(f"lease_s must be between 0.001 and 1e8 seconds or None, got {lease_s!r}")
            lease_ms = math.ceil(lease_s * 1000.0)
        if isinstance(max_redeliveries, bool) or not isinstance(max_redeliveries, int):
            raise TypeError(f"max_redeliveries must be an int >= 0, got {max_redeliveries!r}")
        if max_redeliveries < 0:
            raise ValueError(f"max_redeliveries must be an int >= 0, got {max_redeliveries!r}")
        if isinstance(replay_window_s, bool) or not isinstance(replay_window_s, (int, float)):
            raise TypeError(f"replay_window_s must be a number of seconds, got {replay_window_s!r}")
        if not (0 <= replay_window_s <= 86400):
            raise ValueError(f"replay_window_s must be between 0 and 86400 seconds, got {replay_window_s!r}")
        self._name = name
        self._capacity = cap
        self._policy = pol
        self._policy_code = _POLICY_CODE[pol]
        self._pool_id = pool
        self._clock = clk
        self._limit = limit
        self._prefix = prefix
        self._prefix_dash = prefix + "-"
        self._lease_ms = lease_ms
        self._max_redeliveries = max_redeliveries
        self._replay_ms = math.ceil(replay_window_s * 1000.0)
        self._keys = tuple(f"oc:{{{name}}}:{suffix}" for suffix in _KEY_SUFFIXES)
        self._wake_key = self._keys[_KEY_SUFFIXES.index("wake")]
        self._config = f"capacity={cap};policy={pol.value};lease_ms={lease_ms};max_redeliveries={max_redeliveries}"

    # -- properties -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The queue's name on Redis (its keys are ``oc:{name}:...``)."""
        return self._name

    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy."""
        return self._policy

    @property
    def pool_id(self) -> str:
        """The worker pool this queue feeds (a label in metrics and messages; default: the name)."""
        return self._pool_id

    @property
    def id_prefix(self) -> str:
        """Prefix of the job ids this instance makes (the counter after it is shared on Redis)."""
        return self._prefix

    @property
    def lease_s(self) -> float | None:
        """How long a dequeued job stays leased before it is redelivered (None: no leases)."""
        return self._lease_ms / 1000.0 if self._lease_ms else None

    @property
    def max_redeliveries(self) -> int:
        """Redeliveries of a job before its next expired lease dead-letters it."""
        return self._max_redeliveries

    def capacity(self) -> int:
        """The most jobs the queue admits (redelivered jobs may exceed it, see the class)."""
        return self._capacity

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} name={self._name!r} pool_id={self._pool_id!r} policy={self._policy.value!r} "
            f"capacity={self._capacity} lease_s={self.lease_s!r}>"
        )

    # -- arguments --------------------------------------------------------------------
    def _args(self, op: str, replayable: bool = False) -> list[Any]:
        clock = self._clock
        now = "" if clock is None else repr(call_clock(clock))
        # Random, not a counter: unique across threads, processes and forks without coordination.
        nonce = os.urandom(12).hex() if replayable and self._replay_ms else ""
        return [op, now, self._lease_ms, self._max_redeliveries, self._replay_ms, nonce]

    def _enqueue_args(self, tasks: Sequence[Any], blobs: Sequence[str] | None = None) -> list[Any]:
        if blobs is None:
            blobs = [encode_task(task) for task in tasks]
        args = self._args("enq", True)
        args += [self._capacity, self._policy_code, self._limit, self._prefix, len(tasks)]
        for task, blob in zip(tasks, blobs, strict=True):
            job_id = task.job_id
            args += [
                "" if job_id is None else job_id,
                self._own_counter(job_id) if job_id is not None else 0,
                _PRIORITY_INDEX[task.priority],
                task.max_tokens,
                blob,
            ]
        return args

    def _own_counter(self, job_id: str) -> int:
        prefix = self._prefix_dash
        if job_id.startswith(prefix):
            digits = job_id[len(prefix) :]
            if 0 < len(digits) <= 16 and digits[0] != "0" and all(c in "0123456789abcdef" for c in digits):
                value = int(digits, 16)
                return value if value < _ID_COUNTER_MAX else 0
        return 0

    @staticmethod
    def _id_arg(job_id: object) -> str | None:
        """The id to send, or None when it cannot be queued (not UTF-8 encodable)."""
        job_id = check_job_id(job_id)
        try:
            job_id.encode()
        except UnicodeEncodeError:
            return None
        return job_id

    # -- replies ----------------------------------------------------------------------
    def _enqueue_results(self, tasks: Sequence[Any], reply: list[Any]) -> list[Any]:
        results: list[Any] = []
        for task, item in zip(tasks, reply, strict=True):
            if item[0] == 1:
                evicted = None
                if item[3] is not None:
                    evicted = Job(_str(item[3]), decode_task(item[4]), float(item[5]), float(item[6]))
                results.append(Accepted(_str(item[1]), int(item[2]), evicted))
            else:
                code, ahead, deq, win = int(item[1]), int(item[2]), int(item[3]), float(item[4])
                retry_ms = _retry_after(ahead if code == 5 else 1, deq, win) if code in (1, 5) else 0
                results.append(Rejected(_CODE_REASON[code], retry_ms, self._policy, self._message(code, task, ahead)))
        return results

    def _message(self, code: int, task: Any, ahead: int) -> str:
        if code == 4:
            return f"queue {self._pool_id!r} is closed"
        if code == 3:
            return f"max_tokens {task.max_tokens} exceeds this queue's max_tokens_limit {self._limit}"
        if code == 2:
            return f"job_id {task.job_id!r} is already queued"
        if code == 6:
            return f"job_id {task.job_id!r} is leased to a consumer and not completed yet"
        if code == 5:
            return f"fail-fast: {ahead} job(s) queued ahead of this {task.priority.value} task"
        if self._policy is AdmissionPolicy.DROP_LRU:
            return (
                f"queue {self._pool_id!r} is full ({self._capacity}) of interactive jobs; "
                "a batch task cannot evict them"
            )
        return f"queue {self._pool_id!r} is full ({self._capacity})"

    @staticmethod
    def _jobs(flat: Sequence[Any], start: int, stride: int) -> list[Any]:
        return [
            Job(_str(flat[i]), decode_task(flat[i + 1]), float(flat[i + 2]), float(flat[i + 3]))
            for i in range(start, len(flat), stride)
        ]

    def _metrics(self, reply: list[Any]) -> QueueMetrics:
        now_s, d0, d1, ctr, oldest, win, enq, deq, hist, wmax, life, wsum, closed = reply
        win_f = float(win)
        raw = (
            float(now_s),
            self._capacity,
            int(d0),
            int(d1),
            int(ctr[0]),
            tuple(int(x) for x in ctr[1:5]),
            int(ctr[5]),
            int(ctr[6]),
            int(ctr[7]),
            int(ctr[8]),
            None if oldest is None else float(oldest),
            win_f,
            int(enq),
            int(deq),
            [int(x) for x in hist],
            float(wmax),
            [int(x) for x in life],
            float(wsum),
            _retry_after(1, int(deq), win_f),
            bool(closed),
        )
        return build_metrics(self._pool_id, self._policy.value, raw)

    @staticmethod
    def _lease_stats(reply: list[Any]) -> LeaseStats:
        leased, completed, redelivered, dead, dlq, next_ms = (int(x) for x in reply)
        return LeaseStats(leased, completed, redelivered, dead, dlq, None if next_ms < 0 else next_ms)

    @staticmethod
    def _dead_letters(reply: list[Any]) -> list[DeadLetter]:
        out = []
        for raw in reply:
            obj = json.loads(raw)
            task = obj["task"]
            out.append(
                DeadLetter(
                    obj["job_id"],
                    _task_from(task) if isinstance(task, dict) else None,
                    float(obj["enqueued_at"]),
                    int(obj["deliveries"]),
                    int(obj["dead_at_ms"]),
                )
            )
        return out

    def _check_config(self, stored: bytes | str) -> None:
        stored_s = _str(stored)
        if stored_s != self._config:
            raise ValueError(
                f"queue {self._name!r} exists on Redis with {stored_s.replace(';', ', ')}; this RedisQueue was given "
                f"{self._config.replace(';', ', ')}: use the same settings, or delete() the queue first"
            )

    def _unavailable(self, exc: Exception) -> QueueUnavailableError:
        return QueueUnavailableError(
            f"Redis is unavailable for queue {self._name!r} ({type(exc).__name__}: {exc}); "
            "the operation was not answered (it may have been applied if the reply was lost)"
        )

    @staticmethod
    def _priority_index(priority: Priority | str) -> int:
        return _PRIORITY_INDEX[Priority.parse(priority, "priority")]  # type: ignore[index]

    def _wait_s(self, remaining_s: float, next_lease_ms: int) -> float:
        """Seconds to block: until the deadline, the next lease expiry or the socket timeout."""
        wait = remaining_s
        if next_lease_ms >= 0:
            wait = min(wait, next_lease_ms / 1000.0)
        if self._block_cap_s is not None:
            wait = min(wait, self._block_cap_s)
        if math.isinf(wait):
            return 0.0  # BLPOP's "forever"
        # BLPOP takes milliseconds: below 1 ms it would mean forever.
        return max(0.001, math.ceil(wait * 1000.0) / 1000.0)


def _block_cap(kwargs: dict[str, Any]) -> float | None:
    """Longest BLPOP wait the client's socket timeout allows (None: no limit)."""
    socket_timeout = kwargs.get("socket_timeout")
    if socket_timeout is None:
        return None
    return max(0.001, float(socket_timeout) * 0.8 - 0.05)


def _connection_kwargs(client: Any) -> dict[str, Any]:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


# ---------------------------------------------------------------------------------------
# The synchronous client


class RedisQueue(_RedisQueueBase):
    """A bounded admission queue on Redis, shared by every process that names it.

    ``RedisQueue(client, name, capacity, policy=REJECT_NEW, *, pool_id=None, clock=None,
    max_tokens_limit=None, id_prefix=None, lease_s=30.0, max_redeliveries=5,
    replay_window_s=60.0)``. ``client`` is a ``redis.Redis`` (or ``RedisCluster``) or a
    URL (``"redis://host:6379/0"``). The first ``RedisQueue`` of a name records capacity,
    policy, ``lease_s`` and ``max_redeliveries`` on Redis; a later one with other values
    raises ``ValueError`` (``max_tokens_limit`` and ``pool_id`` are per instance).

    Same methods and results as ``Queue``, plus ``complete``, ``renew``, ``enqueue_many``,
    ``lease_stats``, ``leased``, ``dead_letters`` and ``delete``. Job ids are
    ``<id_prefix>-<hex counter>`` with one counter per queue on Redis: unique across
    processes and hosts. ``clock`` (seconds) stamps enqueue times and metrics windows, as in
    ``Queue``; without it the Redis server's clock is used, common to every client. Leases
    always run on the server's clock.

    Redelivered jobs re-enter even a full queue (never lost to capacity), so ``depth`` may
    exceed ``capacity`` after expiries; new tasks are then refused (DROP_LRU evicts one job
    for each new one) until it is back below.

    A Redis that cannot be reached raises ``QueueUnavailableError`` from every method.
    redis-py retries a command whose connection failed; a retried ``enqueue``,
    ``dequeue``, ``cancel``, ``complete`` or ``drain`` whose first attempt was applied
    gets that attempt's answer (replies are kept ``replay_window_s`` seconds).
    """

    __slots__ = ("_client",)

    def __init__(
        self,
        client: SyncClient | str,
        name: str,
        capacity: int,
        policy: AdmissionPolicy | str = AdmissionPolicy.REJECT_NEW,
        *,
        pool_id: str | None = None,
        clock: Callable[[], float] | None = None,
        max_tokens_limit: int | None = None,
        id_prefix: str | None = None,
        lease_s: float | None = 30.0,
        max_redeliveries: int = 5,
        replay_window_s: float = 60.0,
    ) -> None:
        self._setup(
            name,
            capacity,
            policy,
            pool_id,
            clock,
            max_tokens_limit,
            id_prefix,
            lease_s,
            max_redeliveries,
            replay_window_s,
        )
        if isinstance(client, str):
            self._client: Any = redis.Redis.from_url(client)
            self._owns_client = True
        elif isinstance(client, (redis.Redis, redis.RedisCluster)):
            self._client = client
            self._owns_client = False
        else:
            raise TypeError(f"client must be a redis.Redis, a redis.RedisCluster or a URL, got {client!r}")
        self._block_cap_s = _block_cap(_connection_kwargs(self._client))
        self._check_config(self._call(self._args("reg") + [self._config]))

    def _call(self, args: list[Any]) -> Any:
        client = self._client
        try:
            try:
                return client.evalsha(_SCRIPT_SHA, _NKEYS, *self._keys, *args)
            except NoScriptError:
                client.script_load(_SCRIPT)
                return client.evalsha(_SCRIPT_SHA, _NKEYS, *self._keys, *args)
        except (_RedisConnectionError, _RedisTimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def disconnect(self) -> None:
        """Close the connections of a client this queue made from a URL (a given client is left alone)."""
        if self._owns_client:
            self._client.close()

    # -- admission --------------------------------------------------------------------
    def enqueue(self, task: Any) -> Any:
        """Admit ``task`` or refuse it; never blocks. ``Accepted`` or ``Rejected`` as ``Queue.enqueue``.

        Raises ``TypeError`` when ``task`` is not a ``Task`` and ``TypeError`` / ``ValueError``
        when its payload is not JSON-encodable (nothing is enqueued then).
        """
        return self._enqueue([task])[0]

    def enqueue_many(self, tasks: Iterable[Any]) -> list[Any]:
        """Admit or refuse each task in order, as many ``enqueue`` calls would, in few round trips.

        Every task is encoded before anything is sent: one bad task raises and none is enqueued.
        Each admission is atomic on its own (other clients may interleave between tasks).
        """
        task_list = list(tasks)
        blobs = [encode_task(task) for task in task_list]
        results: list[Any] = []
        for i in range(0, len(task_list), _ENQUEUE_CHUNK):
            results += self._enqueue(task_list[i : i + _ENQUEUE_CHUNK], blobs[i : i + _ENQUEUE_CHUNK])
        return results

    def _enqueue(self, tasks: Sequence[Any], blobs: Sequence[str] | None = None) -> list[Any]:
        args = self._enqueue_args(tasks, blobs)
        return self._enqueue_results(tasks, self._call(args))

    # -- leaving the queue ------------------------------------------------------------
    def _take(self, max_jobs: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout if timeout > 0 else 0.0
        while True:
            reply = self._call(self._args("deq", True) + [max_jobs])
            if len(reply) > 2:
                return self._jobs(reply, 2, 4)
            if reply[0] or timeout == 0:
                return []
            remaining = math.inf
            if timeout > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
            try:
                self._client.blpop([self._wake_key], timeout=self._wait_s(remaining, int(reply[1])))
            except (_RedisConnectionError, _RedisTimeoutError) as exc:
                raise self._unavailable(exc) from exc

    def dequeue(self, timeout: float | None = 0.0) -> Any:
        """The next job (INTERACTIVE first, FIFO within a priority), or None; as ``Queue.dequeue``.

        With leases the job stays leased until ``complete(job.job_id)``. A blocked call
        waits on Redis (BLPOP), never polls: it wakes when a job arrives, the queue is
        closed or a lease expires.
        """
        jobs = self._take(1, check_timeout(timeout))
        return jobs[0] if jobs else None

    def dequeue_many(self, max_jobs: int, timeout: float | None = 0.0) -> list[Any]:
        """Up to ``max_jobs`` jobs in dequeue order, taken atomically; ``timeout`` as ``dequeue``."""
        n = check_count(max_jobs, "max_jobs")
        return self._take(n, check_timeout(timeout))

    def drain(self) -> list[Any]:
        """Remove and return every queued job in dequeue order (leased jobs stay leased)."""
        return self._jobs(self._call(self._args("drain", True)), 0, 4)

    def close(self) -> None:
        """Refuse further enqueues (``QUEUE_CLOSED``) everywhere and wake every blocked consumer."""
        self._call(self._args("close"))

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called on this queue by any client (one round trip)."""
        return bool(self._call(self._args("closed")))

    def is_closed(self) -> bool:
        """``closed`` as a method (the async twin has only this)."""
        return self.closed

    # -- leases -----------------------------------------------------------------------
    def complete(self, job_id: str) -> bool:
        """Acknowledge a dequeued job: it is done and forgotten. False if it is not leased
        (unknown, completed already, or its lease expired and it was requeued or dead-lettered)."""
        arg = self._id_arg(job_id)
        if arg is None:
            return False
        return bool(self._call(self._args("complete", True) + [arg]))

    def complete_many(self, job_ids: Iterable[str]) -> int:
        """Acknowledge several jobs in one round trip; returns how many were leased."""
        args = [a for a in (self._id_arg(j) for j in job_ids) if a is not None]
        if not args:
            return 0
        return int(self._call(self._args("complete", True) + args))

    def renew(self, job_id: str, lease_s: float | None = None) -> bool:
        """Extend a lease to ``lease_s`` (default: the queue's) from now; False if not leased."""
        arg = self._id_arg(job_id)
        ms = self._lease_ms if lease_s is None else _lease_ms_arg(lease_s)
        if arg is None or not ms:
            return False
        return bool(self._call(self._args("renew") + [arg, ms]))

    def leased(self) -> list[str]:
        """Ids of leased jobs, soonest expiry first."""
        return [_str(x) for x in self._call(self._args("leased"))]

    def lease_stats(self) -> LeaseStats:
        """Leases, completions, redeliveries and dead letters."""
        return self._lease_stats(self._call(self._args("leases")))

    def dead_letters(self) -> list[DeadLetter]:
        """The dead-letter list, oldest first."""
        return self._dead_letters(self._call(self._args("dlq")))

    def clear_dead_letters(self) -> int:
        """Empty the dead-letter list; returns how many entries it had."""
        return int(self._call(self._args("dlq_clear")))

    # -- by job id --------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; False if it is not queued (leased jobs are not queued)."""
        arg = self._id_arg(job_id)
        return arg is not None and bool(self._call(self._args("cancel", True) + [arg]))

    def touch(self, job_id: str) -> bool:
        """Mark a queued job as just used (DROP_LRU evicts it last); False if not queued."""
        arg = self._id_arg(job_id)
        return arg is not None and bool(self._call(self._args("touch") + [arg]))

    def position(self, job_id: str) -> int | None:
        """Jobs ``dequeue`` would hand out before this one (0 = next), or None if not queued."""
        arg = self._id_arg(job_id)
        if arg is None:
            return None
        pos = int(self._call(self._args("position") + [arg]))
        return None if pos < 0 else pos

    def contains(self, job_id: object) -> bool:
        """``job_id in queue``: True while the job is queued (not once dequeued)."""
        if type(job_id) is not str:
            return False
        try:
            arg = self._id_arg(job_id)
        except ValueError:  # not a valid id: cannot be queued
            return False
        return arg is not None and bool(self._call(self._args("contains") + [arg]))

    def __contains__(self, job_id: object) -> bool:
        return self.contains(job_id)

    def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """Queued job ids in dequeue order (only one class when ``priority`` is given)."""
        which = 0 if priority is None else self._priority_index(priority)
        return [_str(x) for x in self._call(self._args("snapshot") + [which])]

    def lru_order(self, priority: Priority | str) -> list[str]:
        """Job ids of one class from least to most recently used (DROP_LRU's victim first)."""
        return [_str(x) for x in self._call(self._args("lru") + [self._priority_index(priority)])]

    def depth(self) -> int:
        """Jobs queued now (not counting leased ones)."""
        d0, d1 = self._call(self._args("depth"))
        return int(d0) + int(d1)

    def __len__(self) -> int:
        return self.depth()

    def metrics(self) -> QueueMetrics:
        """A ``QueueMetrics`` snapshot computed on the server, as ``Queue.metrics``."""
        return self._metrics(self._call(self._args("metrics")))

    def delete(self) -> None:
        """Delete every key of this queue on Redis (its jobs, leases, counters and configuration)."""
        try:
            self._client.delete(*self._keys)
        except (_RedisConnectionError, _RedisTimeoutError) as exc:
            raise self._unavailable(exc) from exc


def _lease_ms_arg(lease_s: object) -> int:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)):
        raise TypeError(f"lease_s must be a number of seconds or None, got {lease_s!r}")
    if not (0.001 <= lease_s <= 1e8):
        raise ValueError(f"lease_s must be between 0.001 and 1e8 seconds or None, got {lease_s!r}")
    return math.ceil(lease_s * 1000.0)


# ---------------------------------------------------------------------------------------
# The asyncio client


class AsyncRedisQueue(_RedisQueueBase):
    """``RedisQueue`` on ``redis.asyncio``: the same methods, awaited.

    ``AsyncRedisQueue(client, name, capacity, policy, **same_options)`` with a
    ``redis.asyncio.Redis`` (or cluster) client or a URL. The configuration check runs on
    the first operation, or at once with ``await AsyncRedisQueue.create(...)``. What are
    dunder methods on ``RedisQueue`` are coroutines here: ``await q.contains(id)``,
    ``await q.depth()``, ``await q.is_closed()``.
    """

    __slots__ = ("_client", "_registered")

    def __init__(
        self,
        client: AsyncClient | str,
        name: str,
        capacity: int,
        policy: AdmissionPolicy | str = AdmissionPolicy.REJECT_NEW,
        *,
        pool_id: str | None = None,
        clock: Callable[[], float] | None = None,
        max_tokens_limit: int | None = None,
        id_prefix: str | None = None,
        lease_s: float | None = 30.0,
        max_redeliveries: int = 5,
        replay_window_s: float = 60.0,
    ) -> None:
        self._setup(
            name,
            capacity,
            policy,
            pool_id,
            clock,
            max_tokens_limit,
            id_prefix,
            lease_s,
            max_redeliveries,
            replay_window_s,
        )
        if isinstance(client, str):
            self._client: Any = redis.asyncio.Redis.from_url(client)
            self._owns_client = True
        elif isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
            self._client = client
            self._owns_client = False
        else:
            raise TypeError(
                f"client must be a redis.asyncio.Redis, a redis.asyncio.RedisCluster or a URL, got {client!r}"
            )
        self._block_cap_s = _block_cap(_connection_kwargs(self._client))
        self._registered = False

    @classmethod
    async def create(
        cls,
        client: AsyncClient | str,
        name: str,
        capacity: int,
        policy: AdmissionPolicy | str = AdmissionPolicy.REJECT_NEW,
        **options: Any,
    ) -> AsyncRedisQueue:
        """Construct and check the configuration against Redis at once."""
        queue = cls(client, name, capacity, policy, **options)
        await queue._register()
        return queue

    async def _register(self) -> None:
        self._registered = True
        try:
            self._check_config(await self._raw_call(self._args("reg") + [self._config]))
        except BaseException:
            self._registered = False
            raise

    async def _raw_call(self, args: list[Any]) -> Any:
        client = self._client
        try:
            try:
                return await client.evalsha(_SCRIPT_SHA, _NKEYS, *self._keys, *args)
            except NoScriptError:
                await client.script_load(_SCRIPT)
                return await client.evalsha(_SCRIPT_SHA, _NKEYS, *self._keys, *args)
        except (_RedisConnectionError, _RedisTimeoutError) as exc:
            raise self._unavailable(exc) from exc

    async def _call(self, args: list[Any]) -> Any:
        if not self._registered:
            await self._register()
        return await self._raw_call(args)

    async def disconnect(self) -> None:
        """Close the connections of a client this queue made from a URL (a given client is left alone)."""
        if self._owns_client:
            await self._client.aclose()

    async def enqueue(self, task: Any) -> Any:
        """As ``RedisQueue.enqueue``."""
        return (await self._enqueue([task]))[0]

    async def enqueue_many(self, tasks: Iterable[Any]) -> list[Any]:
        """As ``RedisQueue.enqueue_many``."""
        task_list = list(tasks)
        blobs = [encode_task(task) for task in task_list]
        results: list[Any] = []
        for i in range(0, len(task_list), _ENQUEUE_CHUNK):
            results += await self._enqueue(task_list[i : i + _ENQUEUE_CHUNK], blobs[i : i + _ENQUEUE_CHUNK])
        return results

    async def _enqueue(self, tasks: Sequence[Any], blobs: Sequence[str] | None = None) -> list[Any]:
        args = self._enqueue_args(tasks, blobs)
        return self._enqueue_results(tasks, await self._call(args))

    async def _take(self, max_jobs: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout if timeout > 0 else 0.0
        while True:
            reply = await self._call(self._args("deq", True) + [max_jobs])
            if len(reply) > 2:
                return self._jobs(reply, 2, 4)
            if reply[0] or timeout == 0:
                return []
            remaining = math.inf
            if timeout > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
            try:
                await self._client.blpop([self._wake_key], timeout=self._wait_s(remaining, int(reply[1])))
            except (_RedisConnectionError, _RedisTimeoutError) as exc:
                raise self._unavailable(exc) from exc

    async def dequeue(self, timeout: float | None = 0.0) -> Any:
        """As ``RedisQueue.dequeue`` (a blocked call can be cancelled)."""
        jobs = await self._take(1, check_timeout(timeout))
        return jobs[0] if jobs else None

    async def dequeue_many(self, max_jobs: int, timeout: float | None = 0.0) -> list[Any]:
        """As ``RedisQueue.dequeue_many``."""
        n = check_count(max_jobs, "max_jobs")
        return await self._take(n, check_timeout(timeout))

    async def drain(self) -> list[Any]:
        """As ``RedisQueue.drain``."""
        return self._jobs(await self._call(self._args("drain", True)), 0, 4)

    async def close(self) -> None:
        """As ``RedisQueue.close``."""
        await self._call(self._args("close"))

    async def is_closed(self) -> bool:
        """True once ``close()`` was called on this queue by any client."""
        return bool(await self._call(self._args("closed")))

    async def complete(self, job_id: str) -> bool:
        """As ``RedisQueue.complete``."""
        arg = self._id_arg(job_id)
        if arg is None:
            return False
        return bool(await self._call(self._args("complete", True) + [arg]))

    async def complete_many(self, job_ids: Iterable[str]) -> int:
        """As ``RedisQueue.complete_many``."""
        args = [a for a in (self._id_arg(j) for j in job_ids) if a is not None]
        if not args:
            return 0
        return int(await self._call(self._args("complete", True) + args))

    async def renew(self, job_id: str, lease_s: float | None = None) -> bool:
        """As ``RedisQueue.renew``."""
        arg = self._id_arg(job_id)
        ms = self._lease_ms if lease_s is None else _lease_ms_arg(lease_s)
        if arg is None or not ms:
            return False
        return bool(await self._call(self._args("renew") + [arg, ms]))

    async def leased(self) -> list[str]:
        """As ``RedisQueue.leased``."""
        return [_str(x) for x in await self._call(self._args("leased"))]

    async def lease_stats(self) -> LeaseStats:
        """As ``RedisQueue.lease_stats``."""
        return self._lease_stats(await self._call(self._args("leases")))

    async def dead_letters(self) -> list[DeadLetter]:
        """As ``RedisQueue.dead_letters``."""
        return self._dead_letters(await self._call(self._args("dlq")))

    async def clear_dead_letters(self) -> int:
        """As ``RedisQueue.clear_dead_letters``."""
        return int(await self._call(self._args("dlq_clear")))

    async def cancel(self, job_id: str) -> bool:
        """As ``RedisQueue.cancel``."""
        arg = self._id_arg(job_id)
        return arg is not None and bool(await self._call(self._args("cancel", True) + [arg]))

    async def touch(self, job_id: str) -> bool:
        """As ``RedisQueue.touch``."""
        arg = self._id_arg(job_id)
        return arg is not None and bool(await self._call(self._args("touch") + [arg]))

    async def position(self, job_id: str) -> int | None:
        """As ``RedisQueue.position``."""
        arg = self._id_arg(job_id)
        if arg is None:
            return None
        pos = int(await self._call(self._args("position") + [arg]))
        return None if pos < 0 else pos

    async def contains(self, job_id: object) -> bool:
        """As ``job_id in RedisQueue``."""
        if type(job_id) is not str:
            return False
        try:
            arg = self._id_arg(job_id)
        except ValueError:  # not a valid id: cannot be queued
            return False
        return arg is not None and bool(await self._call(self._args("contains") + [arg]))

    async def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """As ``RedisQueue.snapshot``."""
        which = 0 if priority is None else self._priority_index(priority)
        return [_str(x) for x in await self._call(self._args("snapshot") + [which])]

    async def lru_order(self, priority: Priority | str) -> list[str]:
        """As ``RedisQueue.lru_order``."""
        return [_str(x) for x in await self._call(self._args("lru") + [self._priority_index(priority)])]

    async def depth(self) -> int:
        """As ``RedisQueue.depth``."""
        d0, d1 = await self._call(self._args("depth"))
        return int(d0) + int(d1)

    async def metrics(self) -> QueueMetrics:
        """As ``RedisQueue.metrics``."""
        return self._metrics(await self._call(self._args("metrics")))

    async def delete(self) -> None:
        """As ``RedisQueue.delete``."""
        try:
            await self._client.delete(*self._keys)
        except (_RedisConnectionError, _RedisTimeoutError) as exc:
            raise self._unavailable(exc) from exc
