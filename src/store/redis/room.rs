//! A waiting room's line in Redis: one line for every instance, so a ticket
//! has the same place whichever instance answers, and admission stays in
//! ticket order across instances. Each operation is one Lua script that does
//! what [`MemoryLine`] does under its lock (same rules, same tuning constants,
//! passed from Rust as arguments so the two never drift; the rules themselves
//! are the cases of [`crate::store::room::spec`], which both lines run), on
//! the Redis server's clock, so instances whose clocks differ agree (the
//! spec's cases run it on the caller's clock instead:
//! [`RedisLine::on_callers_clock`]).
//!
//! Keys, under `{key_prefix}room:{name}:`: `s` (a hash: head, tail, counters,
//! token bucket, rate estimator), `l` (the places, ticket → `joined,seen,gone`),
//! `lz` (the places by last check-in, for sweeping), `c` and `cz` (calls not
//! picked up, and their call times for sweeping), `a` and `az` (passes →
//! admission number, and their last use for expiry), `d`, `dz` and `dd`
//! (draws before the opening, their order, and where each was placed), `o`
//! (the draws of an opening not yet written into the line, in their order:
//! their places are kept from the opening instant), and `control` (the
//! operator's setting). Every key has a TTL of [`TTL_FACTOR`] × the longer
//! of `session` and `ticket_timeout`, renewed by every operation, so an
//! abandoned room cleans itself; `control` lives [`CONTROL_TTL`].
//!
//! Every script does bounded work whatever the line's length: a sweep and
//! the head's work (draws written in, tickets skipped or called) are each a
//! batch of at most [`SWEEP_BATCH`] entries, every other step is O(1) or
//! O(log n).
//!
//! Ticket numbers are unique across Redis restarts: a line whose keys do not
//! exist starts at `unix ms × 1024`, above every number an earlier line (with
//! fewer than 1024 arrivals per millisecond of its life) gave out, so an old
//! ticket is unknown (its holder is a new shopper) and never lands on a new
//! shopper's place. Numbers stay below 2^53, exact in Lua's doubles.
//!
//! While Redis does not answer, the line falls back to a [`MemoryLine`] of
//! this instance: new shoppers get tickets of this instance's own line, marked
//! with [`LOCAL_BIT`] and this line's random tag, so they are never taken for
//! shared places (nor for another instance's local ones). A shopper waiting in
//! the shared line keeps their place through a blip ([`KEEP_PLACES_FOR`]);
//! after that they join this instance's line. A shared pass is let through
//! while Redis is down (it cannot be checked, and sending a checkout back to
//! the line is worse than one session too many). Once Redis answers, new
//! shoppers get shared tickets again; tickets of the local line are served by
//! it until their holders are in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;
use tokio::time::Instant;

use super::Redis;
use crate::store::room::{
    Admission, Arrival, CheckIn, Control, Limits, LineStats, MemoryLine, Outcome, RoomLine,
    BURST_SECONDS, DIRECT_BIT, DRAW_BIT, MAX_PASSES, MAX_PASS_MOVES, RATE_TAU, SKIP_WEIGHT,
    SWEEP_EVERY,
};
use crate::telemetry::StoreFeature;

/// Ids of this instance's fallback line carry this bit (draws carry
/// [`DIRECT_BIT`] instead, a bit no draw uses).
const LOCAL_BIT: u64 = 1 << 61;
/// Where the fallback line's tag sits in its ids.
const TAG_SHIFT: u32 = 40;
/// The tag: 20 random bits per line, so another instance's (or an earlier
/// process's) local tickets are unknown here.
const TAG_MASK: u64 = (1 << 20) - 1;
/// The fallback line's own numbers, below the tag.
const LOCAL_MASK: u64 = (1 << TAG_SHIFT) - 1;
/// Shared numbers are below this (exact in Lua's doubles).
const SHARED_LIMIT: u64 = 1 << 53;
/// Shared draws are below this, so they sort exactly as Redis scores.
const DRAW_LIMIT: u64 = 1 << 52;

/// A shopper waiting in the shared line keeps their place this long into an
/// outage (a timeout, a failover: Redis is back within a few probes), shown
/// at the last position known; after it, they join this instance's line
/// rather than wait with no progress while newcomers are admitted locally.
const KEEP_PLACES_FOR: Duration = Duration::from_secs(2);
/// Keys live this many times the longer of `session` and `ticket_timeout`
/// after the last operation.
const TTL_FACTOR: u32 = 4;
/// The operator's setting lives this long after its last read or write.
const CONTROL_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Entries one operation works through at most, twice: expired passes,
/// uncollected calls and abandoned places removed by a sweep (together), and
/// draws written into the line at the opening, tickets skipped at the head
/// and tickets called (together); each entry is a few Redis commands. A
/// script stays short (measured by `cargo bench --bench redis_line`) even
/// when a whole sale's passes expire, a flood of tickets is abandoned, a
/// million draws are placed at the opening or a large `max_active` frees up
/// at once: the rest go with the next operations (a sweep that filled its
/// batch goes on with the next one, not [`SWEEP_EVERY`] later), and a line
/// long enough to need many batches gets many operations (a million
/// shoppers checking in every 10 s make 100 000 a second).
const SWEEP_BATCH: u32 = 50;

/// Shared by every script: the keys, the clock, the limits and tuning
/// constants, the state hash (created when missing, at a time-based base),
/// `advance` (sweep, opening, token bucket, calls from the head) and `save`.
///
/// ARGV: 1 may_call (0/1), 2 open (0/1), 3 max_active (-1: none), 4 per
/// second (-1: none), 5 session (µs), 6 ticket_timeout (µs), 7 TTL (ms),
/// 8 RATE_TAU (s), 9 SKIP_WEIGHT, 10 BURST_SECONDS, 11 SWEEP_EVERY (µs),
/// 12 MAX_PASSES, 13 SWEEP_BATCH, 14 now (µs since the Unix epoch; empty:
/// the server's `TIME`, as in production), 15 max_session (µs), 16
/// max_waiting (-1: none), 17 the client's tag; the operation's own from 18.
///
/// A pass (`A`) is `number,since µs,client,moves`: the network it serves
/// and how often it moved; its last request is its score in `AZ`.
///
/// Replies are arrays of strings: kind, tickets abandoned by this operation,
/// the head, then the operation's fields.
const PRELUDE: &str = r"
local S, L, C, CZ, A, AZ, D, DZ, DD, LZ, O = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local function I(n) return string.format('%.0f', n) end
local function F(x) return string.format('%.17g', x) end
local may_call = ARGV[1] == '1'
local open = ARGV[2] == '1'
local max_active = tonumber(ARGV[3])
local per_second = tonumber(ARGV[4])
local session = tonumber(ARGV[5])
local timeout = tonumber(ARGV[6])
local ttl = ARGV[7]
local tau = tonumber(ARGV[8])
local skip_weight = tonumber(ARGV[9])
local burst = tonumber(ARGV[10])
local sweep_every = tonumber(ARGV[11])
local max_passes = tonumber(ARGV[12])
local sweep_batch = tonumber(ARGV[13])
local max_session = tonumber(ARGV[15])
local max_waiting = tonumber(ARGV[16])
local client = ARGV[17]
local out = 0

local st = {}
local raw = redis.call('HGETALL', S)
for i = 1, #raw, 2 do st[raw[i]] = raw[i + 1] end
local head, tail, gone, next_number, next_direct, tokens, tokens_at
local r_adm, r_busy, r_at, busy, skipped, last_sweep, from_line, direct_n, abandoned
-- At the opening: the place of the next draw to write into the line, and
-- how many are still to write (their places are kept, behind the head).
local o_base, o_left = tonumber(st.o_base or '0'), tonumber(st.o_left or '0')
if st.head == nil then
  -- A new line (or one that expired or was lost): start above every number
  -- an earlier one gave out.
  redis.call('DEL', L, C, CZ, A, AZ, D, DZ, DD, LZ, O)
  o_base, o_left = 0, 0
  local base = math.floor(now / 1000) * 1024
  head, tail, gone, next_number, next_direct = base, base, 0, 1, base
  -- A new room lets its first burst in at once.
  tokens, tokens_at = math.huge, now
  r_adm, r_busy, r_at, busy = 0, 0, now, false
  skipped, last_sweep, from_line, direct_n, abandoned = 0, now, 0, 0, 0
else
  head, tail, gone = tonumber(st.head), tonumber(st.tail), tonumber(st.gone)
  next_number, next_direct = tonumber(st.next_number), tonumber(st.next_direct)
  if st.tokens == 'inf' then tokens = math.huge else tokens = tonumber(st.tokens) end
  tokens_at = tonumber(st.tokens_at)
  r_adm, r_busy, r_at = tonumber(st.r_adm), tonumber(st.r_busy), tonumber(st.r_at)
  busy = st.busy == '1'
  skipped, last_sweep = tonumber(st.skipped), tonumber(st.last_sweep)
  from_line, direct_n, abandoned = tonumber(st.from_line), tonumber(st.direct_n), tonumber(st.abandoned)
end

local function save()
  local tk = 'inf'
  if tokens ~= math.huge then tk = F(tokens) end
  redis.call('HSET', S, 'head', I(head), 'tail', I(tail), 'gone', I(gone),
    'next_number', I(next_number), 'next_direct', I(next_direct),
    'tokens', tk, 'tokens_at', I(tokens_at),
    'r_adm', F(r_adm), 'r_busy', F(r_busy), 'r_at', I(r_at), 'busy', busy and '1' or '0',
    'skipped', F(skipped), 'last_sweep', I(last_sweep),
    'from_line', I(from_line), 'direct_n', I(direct_n), 'abandoned', I(abandoned),
    'o_base', I(o_base), 'o_left', I(o_left))
  for _, k in ipairs({S, L, C, CZ, A, AZ, D, DZ, DD, LZ, O}) do redis.call('PEXPIRE', k, ttl) end
end

local function waiting() return tail - head - gone end

local function slot(v)
  local j, s, g = string.match(v, '^(%d+),(%d+),(%d)$')
  return tonumber(j), tonumber(s), g == '1'
end

local function drop(hash, zset, members)
  for _, m in ipairs(members) do redis.call('HDEL', hash, m) end
  for _, m in ipairs(members) do redis.call('ZREM', zset, m) end
end

-- What one script may still do (an operation may advance twice): a sweep,
-- and `steps` entries of the head's work.
local swept = false
local steps = sweep_batch

local function advance()
  local dt = (now - r_at) / 1000000
  if dt > 0 then
    local decay = math.exp(-dt / tau)
    r_adm = r_adm * decay
    r_busy = r_busy * decay
    if busy then r_busy = r_busy + tau * (1 - decay) end
    r_at = now
  end
  if not swept and now - last_sweep >= sweep_every then
    -- One batch for the three (the rest go with the next operations).
    swept = true
    local budget = sweep_batch
    local expired = redis.call('ZRANGEBYSCORE', AZ, '-inf', '(' .. I(now - session), 'LIMIT', 0, budget)
    drop(A, AZ, expired)
    budget = budget - #expired
    local lost = {}
    if budget > 0 then
      lost = redis.call('ZRANGEBYSCORE', CZ, '-inf', '(' .. I(now - timeout), 'LIMIT', 0, budget)
    end
    drop(C, CZ, lost)
    budget = budget - #lost
    abandoned = abandoned + #lost
    out = out + #lost
    -- Abandoned places anywhere in the line leave (a batch at a time); the
    -- head counts a missing place as gone when it reaches it.
    local left = {}
    if budget > 0 then
      left = redis.call('ZRANGEBYSCORE', LZ, '-inf', '(' .. I(now - timeout), 'LIMIT', 0, budget)
    end
    budget = budget - #left
    -- A full batch may have left some behind: the next operation sweeps on.
    if budget > 0 then last_sweep = now end
    for _, key in ipairs(left) do
      local v = redis.call('HGET', L, key)
      if v then
        local _, _, is_gone = slot(v)
        if not is_gone then
          -- (A place marked gone was counted when it was.)
          gone = gone + 1
          abandoned = abandoned + 1
          out = out + 1
        end
        redis.call('HDEL', L, key)
      end
    end
    for _, key in ipairs(left) do redis.call('ZREM', LZ, key) end
  end
  -- The work of the head, in `steps`: draws written into the line,
  -- tickets skipped, tickets called.
  if open and o_left == 0 and redis.call('ZCARD', DZ) > 0 then
    -- The opening: the draws take the next places now, in draw order, ahead
    -- of everyone later (`O` keeps that order while they are written in).
    o_left = redis.call('ZCARD', DZ)
    redis.call('RENAME', DZ, O)
    o_base = tail
    tail = tail + o_left
  end
  if o_left > 0 and steps > 0 then
    local batch = redis.call('ZRANGE', O, 0, math.min(o_left, steps) - 1)
    for _, draw in ipairs(batch) do
      local key = I(o_base)
      local v = redis.call('HGET', D, draw)
      if v then
        redis.call('HSET', L, key, v)
        local _, seen = slot(v)
        redis.call('ZADD', LZ, I(seen), key)
        redis.call('HDEL', D, draw)
      else
        -- (Lost with its key: the head passes its place as gone.)
        gone = gone + 1
      end
      redis.call('HSET', DD, draw, key)
      o_base = o_base + 1
    end
    if #batch > 0 then
      redis.call('ZREMRANGEBYRANK', O, 0, #batch - 1)
      o_left = o_left - #batch
    else
      -- (`O` was lost: the places left pass as gone.)
      gone = gone + o_left
      o_base = o_base + o_left
      o_left = 0
    end
    steps = steps - #batch
  end
  if per_second >= 0 then
    local elapsed = math.max(now - tokens_at, 0) / 1000000
    tokens = math.min(tokens + elapsed * per_second, math.max(per_second * burst, 1))
  end
  tokens_at = now
  local on_site
  -- Draws not yet written in wait for the next operation.
  while head < tail and steps > 0 and (o_left == 0 or head < o_base) do
    local key = I(head)
    local v = redis.call('HGET', L, key)
    if not v then
      -- Removed by the sweep (counted then): one gone place fewer.
      head = head + 1
      gone = gone - 1
      steps = steps - 1
      skipped = skipped + (1 - skipped) * skip_weight
    else
      local joined, seen, is_gone = slot(v)
      -- Abandoned tickets at the head go whether or not anyone may be
      -- called, so positions do not count them.
      if is_gone or now - seen > timeout then
        steps = steps - 1
        redis.call('HDEL', L, key)
        redis.call('ZREM', LZ, key)
        head = head + 1
        if is_gone then
          gone = gone - 1
        else
          abandoned = abandoned + 1
          out = out + 1
        end
        skipped = skipped + (1 - skipped) * skip_weight
      else
        if not may_call then break end
        if max_active >= 0 then
          -- (Counted once: only calls add to it while the head moves.)
          on_site = on_site or redis.call('HLEN', A) + redis.call('HLEN', C)
          if on_site >= max_active then break end
        end
        if per_second >= 0 and tokens < 1 then break end
        redis.call('HDEL', L, key)
        redis.call('ZREM', LZ, key)
        head = head + 1
        steps = steps - 1
        skipped = skipped - skipped * skip_weight
        if per_second >= 0 then tokens = tokens - 1 end
        redis.call('HSET', C, key, I(now) .. ',' .. I(next_number) .. ',' .. I(joined))
        redis.call('ZADD', CZ, I(now), key)
        if on_site then on_site = on_site + 1 end
        next_number = next_number + 1
        if joined < now then r_adm = r_adm + 1 end
      end
    end
  end
  busy = waiting() > 0
end

local function has_room()
  return max_active < 0 or redis.call('HLEN', A) + redis.call('HLEN', C) < max_active
end
";

/// The rules of a pass, shared by the line scripts and [`TOUCH`]: needs
/// `A`, `AZ`, `I`, `now`, `session`, `max_session` and `client` defined;
/// [`MAX_PASS_MOVES`] is written in.
/// `use_pass(key)`: `ok` and the number, `expired` (the pass leaves) or
/// `foreign` (its clients are others), or `none`.
static PASS_USE: LazyLock<String> =
    LazyLock::new(|| format!("local max_moves = {MAX_PASS_MOVES}\n{PASS_USE_BODY}"));

const PASS_USE_BODY: &str = r"
local function new_pass(number)
  return number .. ',' .. I(now) .. ',' .. client .. ',0'
end

local function use_pass(key)
  local v = redis.call('HGET', A, key)
  if not v then return 'none' end
  local seen = tonumber(redis.call('ZSCORE', AZ, key) or '0')
  local number, since, holder, moves = string.match(v, '^(%d+),(%d+),(%d+),(%d+)$')
  if not number or now - seen > session or now - tonumber(since) > max_session then
    redis.call('HDEL', A, key)
    redis.call('ZREM', AZ, key)
    return 'expired'
  end
  if holder ~= client then
    if tonumber(moves) >= max_moves then return 'foreign' end
    holder, moves = client, I(tonumber(moves) + 1)
  end
  redis.call('HSET', A, key, number .. ',' .. since .. ',' .. holder .. ',' .. moves)
  redis.call('ZADD', AZ, I(now), key)
  return 'ok', number
end
";

/// The steps of every line script after [`PASS_USE`].
const PRELUDE_STEPS: &str = r"
-- Turns a called ticket into a pass: {number, waited µs} or nil.
local function pick_up(key)
  local v = redis.call('HGET', C, key)
  if not v then return nil end
  local _, number, joined = string.match(v, '^(%d+),(%d+),(%d+)$')
  redis.call('HDEL', C, key)
  redis.call('ZREM', CZ, key)
  redis.call('HSET', A, key, new_pass(number))
  redis.call('ZADD', AZ, I(now), key)
  local waited = now - tonumber(joined)
  if waited <= 0 then direct_n = direct_n + 1 else from_line = from_line + 1 end
  return {number, math.max(waited, 0)}
end

local function reply(kind, ...)
  save()
  return {kind, I(out), I(head), ...}
end
";

/// ARGV 18 direct (0/1), 19 a draw to take before the opening.
/// Replies `admitted` (d: direct or s: ticket, id, number, waited µs or -1),
/// `waiting` (ticket, ahead), `drawn` (draw, draws), `taken` (draw again) or
/// `full` (`max_waiting` wait already).
static ARRIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{PRELUDE}{}{PRELUDE_STEPS}{}",
        super::lua_now_us("ARGV[14]"),
        &*PASS_USE,
        r"
advance()
if ARGV[18] == '1' and waiting() == 0 and redis.call('ZCARD', DZ) == 0 and has_room() then
  local n = next_direct
  next_direct = next_direct + 1
  local number = next_number
  next_number = next_number + 1
  if redis.call('HLEN', A) < max_passes then
    redis.call('HSET', A, 'd' .. I(n), new_pass(I(number)))
    redis.call('ZADD', AZ, I(now), 'd' .. I(n))
  end
  direct_n = direct_n + 1
  return reply('admitted', 'd', I(n), I(number), '-1')
end
local in_line = waiting()
if not open then in_line = redis.call('ZCARD', DZ) end
if max_waiting >= 0 and in_line >= max_waiting then return reply('full') end
local v = I(now) .. ',' .. I(now) .. ',0'
if not open then
  local draw = ARGV[19]
  if redis.call('HEXISTS', D, draw) == 1 or redis.call('HEXISTS', DD, draw) == 1 then
    return reply('taken')
  end
  redis.call('HSET', D, draw, v)
  redis.call('ZADD', DZ, draw, draw)
  return reply('drawn', draw, I(redis.call('ZCARD', DZ)))
end
local seq = tail
redis.call('HSET', L, I(seq), v)
redis.call('ZADD', LZ, I(now), I(seq))
tail = tail + 1
advance()
local p = pick_up(I(seq))
if p then return reply('admitted', 's', I(seq), p[1], I(p[2])) end
return reply('waiting', I(seq), I(seq - head))
"
    ))
});

/// ARGV 18 `r` (a draw) or `s` (a ticket), 19 its number. Replies
/// `admitted` (s, id, number, waited µs or -1, first 0/1), `waiting` (ahead),
/// `drawn` (draws) or `unknown`.
static CHECK_IN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{PRELUDE}{}{PRELUDE_STEPS}{}",
        super::lua_now_us("ARGV[14]"),
        &*PASS_USE,
        r"
local seq
if ARGV[18] == 'r' then
  local draw = ARGV[19]
  local v = redis.call('HGET', D, draw)
  if v then
    local joined, seen, is_gone = slot(v)
    if is_gone then return reply('unknown') end
    if now - seen > timeout then
      if redis.call('ZSCORE', O, draw) then
        -- Its place is kept in the opening's order: lost, marked.
        redis.call('HSET', D, draw, I(joined) .. ',' .. I(seen) .. ',1')
        gone = gone + 1
      else
        redis.call('HDEL', D, draw)
        redis.call('ZREM', DZ, draw)
      end
      abandoned = abandoned + 1
      out = out + 1
      return reply('unknown')
    end
    redis.call('HSET', D, draw, I(joined) .. ',' .. I(now) .. ',0')
    advance()
    local placed = redis.call('HGET', DD, draw)
    if not placed then
      -- Opened, not yet written into the line: its place is known.
      local rank = redis.call('ZRANK', O, draw)
      if rank then return reply('waiting', I(o_base + rank - head)) end
      return reply('drawn', I(redis.call('ZCARD', DZ)))
    end
    seq = tonumber(placed)
  else
    local placed = redis.call('HGET', DD, draw)
    if not placed then return reply('unknown') end
    seq = tonumber(placed)
  end
else
  seq = tonumber(ARGV[19])
end
local key = I(seq)
-- Refresh the place first (unless it is already lost), so the holder
-- checking in is not taken for one who left.
if seq >= head and seq < tail then
  local v = redis.call('HGET', L, key)
  if v then
    local joined, seen, is_gone = slot(v)
    if is_gone then return reply('unknown') end
    if now - seen > timeout then
      redis.call('HSET', L, key, I(joined) .. ',' .. I(seen) .. ',1')
      gone = gone + 1
      abandoned = abandoned + 1
      out = out + 1
      return reply('unknown')
    end
    redis.call('HSET', L, key, I(joined) .. ',' .. I(now) .. ',0')
    redis.call('ZADD', LZ, I(now), key)
  else
    -- Removed by the sweep: abandoned.
    return reply('unknown')
  end
end
advance()
if redis.call('HEXISTS', A, key) == 1 then
  -- Picked up before (the pass cookie may not have reached the shopper):
  -- the pass's rules hold, so a shared called ticket lets no more in.
  local state, number = use_pass(key)
  if state ~= 'ok' then return reply('unknown') end
  return reply('admitted', 's', key, number, '-1', '0')
end
local p = pick_up(key)
if p then return reply('admitted', 's', key, p[1], I(p[2]), '1') end
if seq >= head and seq < tail then return reply('waiting', I(seq - head)) end
return reply('unknown')
"
    ))
});

/// Replies `stats` (waiting, draws, calls, passes, rate admissions, rate
/// busy seconds, skipped share, from line, direct, abandoned).
static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{PRELUDE}{}{PRELUDE_STEPS}{}",
        super::lua_now_us("ARGV[14]"),
        &*PASS_USE,
        r"
advance()
return reply('stats', I(waiting()), I(redis.call('ZCARD', DZ)), I(redis.call('HLEN', C)),
  I(redis.call('HLEN', A)), F(r_adm), F(r_busy), F(skipped), I(from_line), I(direct_n), I(abandoned))
"
    ))
});

/// KEYS as the others; ARGV pass key, session (µs), TTL (ms), now (as the
/// line scripts' ARGV 14: empty for the server's `TIME`), max_session (µs),
/// the client's tag. 1: in use (the session extends), 0: not. Renews every
/// key's TTL, so a line whose shoppers are all inside does not expire under
/// them.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}{}{}",
        super::lua_now_us("ARGV[4]"),
        r"
local A, AZ = KEYS[5], KEYS[6]
local function I(n) return string.format('%.0f', n) end
local session, max_session, client = tonumber(ARGV[2]), tonumber(ARGV[5]), ARGV[6]
",
        &*PASS_USE,
        r"
if use_pass(ARGV[1]) ~= 'ok' then return 0 end
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ARGV[3]) end
return 1
",
    ))
});

/// KEYS[1] control; ARGV TTL (ms), the new setting (none: read). Replies the
/// setting (`""` when never set).
static CONTROL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return ARGV[2]
end
local v = redis.call('GET', KEYS[1])
if not v then return '' end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return v
",
    )
});

/// What a ticket or pass id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    /// A place (or a pass from one) in the shared line.
    Ticket(u64),
    /// A draw in the shared line.
    Draw(u64),
    /// A pass admitted without a place, in the shared line.
    Direct(u64),
    /// An id of this instance's fallback line, as that line knows it.
    Local(u64),
    /// Nothing this line gave out (another instance's local line, an earlier
    /// process, out of range).
    Foreign,
}

/// What the shared line was last seen like, for shoppers who keep their
/// place through a blip.
#[derive(Debug, Default)]
struct Seen {
    head: u64,
    drawn: u64,
    /// When this line's first fallback of the current outage happened.
    outage: Option<Instant>,
}

/// The draws of the fallback line, by the number their cookies carry (a
/// memory draw uses all 62 bits, so it cannot carry the tag itself). About
/// 40 bytes a draw, kept while the process runs, like the memory line's own.
#[derive(Debug, Default)]
struct LocalDraws {
    by_index: HashMap<u64, u64>,
    next: u64,
}

/// One room's line in Redis, shared by every instance, with this instance's
/// memory line for when Redis does not answer.
#[derive(Debug)]
pub struct RedisLine {
    redis: Arc<Redis>,
    /// s, l, c, cz, a, az, d, dz, dd, lz, o (see the module doc).
    keys: Vec<Vec<u8>>,
    control_key: Vec<u8>,
    epoch: u64,
    local: Arc<MemoryLine>,
    tag: u64,
    local_draws: Mutex<LocalDraws>,
    /// The operator's setting last read from Redis (or set here).
    control: Mutex<Control>,
    seen: Mutex<Seen>,
    /// TTL of the line's keys, ms, from the limits last seen.
    ttl_ms: AtomicU64,
    /// `None`: the scripts read the Redis server's clock, one for every
    /// instance. Some((origin, Unix µs at origin)): they take the caller's
    /// `now`, mapped onto Unix time at `origin` (the spec's cases).
    callers_clock: Option<(Instant, u64)>,
}

impl RedisLine {
    /// The line of room `room` in `redis`; `local` serves while Redis does not
    /// answer (the room's memory line, kept across reloads).
    pub fn new(redis: Arc<Redis>, room: &str, local: Arc<MemoryLine>) -> RedisLine {
        let keys = ["s", "l", "c", "cz", "a", "az", "d", "dz", "dd", "lz", "o"]
            .iter()
            .map(|part| redis.key(&[b"room", room.as_bytes(), part.as_bytes()]))
            .collect();
        let control_key = redis.key(&[b"room", room.as_bytes(), b"control"]);
        RedisLine {
            epoch: epoch(&redis.settings().key_prefix, room),
            keys,
            control_key,
            local,
            tag: fastrand::u64(..=TAG_MASK),
            local_draws: Mutex::new(LocalDraws::default()),
            control: Mutex::new(Control::Auto),
            seen: Mutex::new(Seen::default()),
            ttl_ms: AtomicU64::new(CONTROL_TTL.as_millis() as u64),
            callers_clock: None,
            redis,
        }
    }

    /// This line with its scripts timed by the `now` each operation is given
    /// (mapped onto Unix time from this moment) instead of the Redis server's
    /// clock: what [`crate::store::room::spec`] needs to drive time. Not for
    /// serving: instances whose clocks differ would disagree.
    pub fn on_callers_clock(mut self) -> RedisLine {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.callers_clock = Some((Instant::now(), unix_us));
        self
    }

    /// The scripts' `now` argument: empty (the server's clock) unless on the
    /// caller's clock.
    fn now_arg(&self, now: Instant) -> String {
        let Some((origin, unix_us)) = self.callers_clock else {
            return String::new();
        };
        let us = if now >= origin {
            unix_us + (now - origin).as_micros() as u64
        } else {
            unix_us.saturating_sub((origin - now).as_micros() as u64)
        };
        us.to_string()
    }

    /// The Redis it uses (a reload with other settings makes a new line).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn key_refs(&self) -> Vec<&[u8]> {
        self.keys.iter().map(Vec::as_slice).collect()
    }

    /// The arguments every line script takes (see [`PRELUDE`]).
    fn limit_args(&self, now: Instant, limits: &Limits, client: u64) -> Vec<String> {
        let longest = limits.session.max(limits.ticket_timeout);
        let ttl = (longest * TTL_FACTOR).max(Duration::from_secs(60));
        let ttl_ms = ttl.as_millis() as u64;
        self.ttl_ms.store(ttl_ms, Ordering::Relaxed);
        vec![
            flag(limits.may_call).to_owned(),
            flag(limits.open).to_owned(),
            limits
                .max_active
                .map_or(-1, |m| m.min(SHARED_LIMIT) as i64)
                .to_string(),
            limits
                .per_second
                .filter(|r| r.is_finite() && *r >= 0.0)
                .map_or_else(|| "-1".to_owned(), |r| format!("{r:e}")),
            limits.session.as_micros().to_string(),
            limits.ticket_timeout.as_micros().to_string(),
            ttl_ms.to_string(),
            format!("{RATE_TAU:e}"),
            format!("{SKIP_WEIGHT:e}"),
            format!("{BURST_SECONDS:e}"),
            SWEEP_EVERY.as_micros().to_string(),
            MAX_PASSES.to_string(),
            SWEEP_BATCH.to_string(),
            self.now_arg(now),
            limits.max_session.as_micros().to_string(),
            limits
                .max_waiting
                .map_or(-1, |m| m.min(SHARED_LIMIT) as i64)
                .to_string(),
            client.to_string(),
        ]
    }

    /// Runs a line script; `None`: Redis did not answer (counted as a
    /// fallback) or the reply is not one of ours.
    async fn run(
        &self,
        script: &Script,
        now: Instant,
        limits: &Limits,
        client: u64,
        extra: &[&str],
    ) -> Option<Reply> {
        let mut args = self.limit_args(now, limits, client);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let arg_refs: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
        let fields: Vec<String> = self
            .redis
            .invoke(
                Some(StoreFeature::Room),
                script,
                &self.key_refs(),
                &arg_refs,
            )
            .await?;
        let reply = Reply::parse(fields);
        match &reply {
            Some(reply) => self.answered(reply.head),
            None => log::error!("store: a waiting-room script gave an unexpected reply"),
        }
        reply
    }

    /// Redis answered: the outage (if any) is over.
    fn answered(&self, head: u64) {
        let mut seen = self.seen.lock();
        seen.head = head;
        seen.outage = None;
    }

    /// Redis did not answer: whether a shopper of the shared line still keeps
    /// their place ([`KEEP_PLACES_FOR`] into the outage), and the last head seen.
    fn missed(&self) -> (bool, u64, u64) {
        let mut seen = self.seen.lock();
        let since = *seen.outage.get_or_insert_with(Instant::now);
        (since.elapsed() < KEEP_PLACES_FOR, seen.head, seen.drawn)
    }

    /// Where an id of a cookie belongs.
    fn route(&self, id: u64) -> Id {
        let local = if id & DRAW_BIT != 0 {
            id & DIRECT_BIT != 0
        } else {
            id & LOCAL_BIT != 0
        };
        if local {
            if (id >> TAG_SHIFT) & TAG_MASK != self.tag {
                return Id::Foreign;
            }
            let low = id & LOCAL_MASK;
            if id & DRAW_BIT != 0 {
                let draws = self.local_draws.lock();
                return draws
                    .by_index
                    .get(&low)
                    .map_or(Id::Foreign, |draw| Id::Local(*draw));
            }
            return Id::Local((id & DIRECT_BIT) | low);
        }
        if id & DRAW_BIT != 0 {
            let draw = id & !DRAW_BIT;
            return if draw < DRAW_LIMIT {
                Id::Draw(draw)
            } else {
                Id::Foreign
            };
        }
        let low = id & !DIRECT_BIT;
        match (id & DIRECT_BIT != 0, low < SHARED_LIMIT) {
            (_, false) => Id::Foreign,
            (true, true) => Id::Direct(low),
            (false, true) => Id::Ticket(low),
        }
    }

    /// The id a cookie carries for an id of the fallback line.
    fn local_id(&self, id: u64) -> u64 {
        let tag = self.tag << TAG_SHIFT;
        if id & DRAW_BIT != 0 {
            let mut draws = self.local_draws.lock();
            let index = draws.next & LOCAL_MASK;
            draws.next += 1;
            draws.by_index.insert(index, id);
            return DRAW_BIT | DIRECT_BIT | tag | index;
        }
        (id & DIRECT_BIT) | LOCAL_BIT | tag | (id & LOCAL_MASK)
    }

    fn local_admission(&self, admission: Admission) -> Admission {
        Admission {
            pass: self.local_id(admission.pass),
            ..admission
        }
    }

    async fn arrive_locally(
        &self,
        client: u64,
        now: Instant,
        limits: &Limits,
        direct: bool,
    ) -> (Arrival, Outcome) {
        let (arrival, outcome) = self.local.arrive(client, now, limits, direct).await;
        let arrival = match arrival {
            Arrival::Admitted(admission) => Arrival::Admitted(self.local_admission(admission)),
            Arrival::Waiting { seq, ahead } => Arrival::Waiting {
                seq: self.local_id(seq),
                ahead,
            },
            Arrival::Drawn { seq, drawn } => Arrival::Drawn {
                seq: self.local_id(seq),
                drawn,
            },
            Arrival::Full => Arrival::Full,
        };
        (arrival, outcome)
    }
}

fn flag(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// The same number on every instance for one room of one key prefix, never
/// 0: cookies are checked against it before any round trip. A Redis restart
/// does not change it; the time-based ticket numbers tell old tickets apart.
fn epoch(key_prefix: &str, room: &str) -> u64 {
    let mut input = Vec::with_capacity(key_prefix.len() + room.len() + 16);
    input.extend_from_slice(b"ordergate room line\0");
    input.extend_from_slice(key_prefix.as_bytes());
    input.push(0);
    input.extend_from_slice(room.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(bytes).max(1)
}

/// A line script's reply: kind, tickets abandoned, head, fields.
#[derive(Debug)]
struct Reply {
    kind: String,
    abandoned: u32,
    head: u64,
    fields: Vec<String>,
}

impl Reply {
    fn parse(mut fields: Vec<String>) -> Option<Reply> {
        if fields.len() < 3 {
            return None;
        }
        let rest = fields.split_off(3);
        let head = fields.pop()?.parse().ok()?;
        let abandoned = fields.pop()?.parse::<u64>().ok()?;
        Some(Reply {
            kind: fields.pop()?,
            abandoned: u32::try_from(abandoned).unwrap_or(u32::MAX),
            head,
            fields: rest,
        })
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            abandoned: self.abandoned,
        }
    }

    fn int(&self, i: usize) -> Option<u64> {
        self.fields.get(i)?.parse().ok()
    }

    fn float(&self, i: usize) -> Option<f64> {
        self.fields.get(i)?.parse().ok()
    }

    fn text(&self, i: usize) -> Option<&str> {
        self.fields.get(i).map(String::as_str)
    }

    /// `admitted`: kind (d/s), id, number, waited µs (-1: none), first (1,
    /// when absent).
    fn admission(&self) -> Option<Admission> {
        let id = self.int(1)?;
        let pass = match self.text(0)? {
            "d" => DIRECT_BIT | id,
            _ => id,
        };
        let waited = self
            .text(3)?
            .parse::<u64>()
            .ok()
            .filter(|us| *us > 0)
            .map(Duration::from_micros);
        Some(Admission {
            pass,
            number: self.int(2)?,
            waited,
            first: self.text(4).is_none_or(|first| first == "1"),
        })
    }
}

impl Reply {
    /// `stats`: the fields of [`LineStats`] in order.
    fn stats(&self) -> Option<LineStats> {
        Some(LineStats {
            waiting: self.int(0)?,
            drawn: self.int(1)?,
            called: self.int(2)?,
            active: self.int(3)?,
            rate_admissions: self.float(4)?,
            rate_busy_seconds: self.float(5)?,
            skipped_share: self.float(6)?,
            admitted_from_line: self.int(7)?,
            admitted_direct: self.int(8)?,
            abandoned: self.int(9)?,
        })
    }
}

/// Most draws tried when the random one is taken (1 in 2^52 per draw).
const DRAW_TRIES: usize = 8;

#[async_trait]
impl RoomLine for RedisLine {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    async fn arrive(
        &self,
        client: u64,
        now: Instant,
        limits: &Limits,
        direct: bool,
    ) -> (Arrival, Outcome) {
        for _ in 0..DRAW_TRIES {
            let draw = fastrand::u64(..DRAW_LIMIT).to_string();
            let Some(reply) = self
                .run(&ARRIVE, now, limits, client, &[flag(direct), draw.as_str()])
                .await
            else {
                break;
            };
            let outcome = reply.outcome();
            let arrival = match reply.kind.as_str() {
                "admitted" => reply.admission().map(Arrival::Admitted),
                "waiting" => reply
                    .int(0)
                    .zip(reply.int(1))
                    .map(|(seq, ahead)| Arrival::Waiting { seq, ahead }),
                "drawn" => reply.int(0).zip(reply.int(1)).map(|(draw, drawn)| {
                    self.seen.lock().drawn = drawn;
                    Arrival::Drawn {
                        seq: DRAW_BIT | draw,
                        drawn,
                    }
                }),
                "taken" => continue,
                "full" => Some(Arrival::Full),
                _ => None,
            };
            match arrival {
                Some(arrival) => return (arrival, outcome),
                None => break,
            }
        }
        self.missed();
        self.arrive_locally(client, now, limits, direct).await
    }

    async fn check_in(
        &self,
        seq: u64,
        client: u64,
        now: Instant,
        limits: &Limits,
    ) -> (CheckIn, Outcome) {
        let (kind, number) = match self.route(seq) {
            Id::Local(local) => {
                let (found, outcome) = self.local.check_in(local, client, now, limits).await;
                let found = match found {
                    CheckIn::Admitted(admission) => {
                        CheckIn::Admitted(self.local_admission(admission))
                    }
                    other => other,
                };
                return (found, outcome);
            }
            Id::Foreign | Id::Direct(_) => return (CheckIn::Unknown, Outcome::default()),
            Id::Ticket(number) => ("s", number),
            Id::Draw(draw) => ("r", draw),
        };
        let number_text = number.to_string();
        if let Some(reply) = self
            .run(&CHECK_IN, now, limits, client, &[kind, &number_text])
            .await
        {
            let outcome = reply.outcome();
            let found = match reply.kind.as_str() {
                "admitted" => reply.admission().map(CheckIn::Admitted),
                "waiting" => reply.int(0).map(|ahead| CheckIn::Waiting { ahead }),
                "drawn" => reply.int(0).map(|drawn| CheckIn::Drawn { drawn }),
                "unknown" => Some(CheckIn::Unknown),
                _ => None,
            };
            if let Some(found) = found {
                return (found, outcome);
            }
        }
        // Redis did not answer: keep the place through a blip, then the
        // holder is a new shopper of this instance's line.
        let (keep, head, drawn) = self.missed();
        let found = match (keep, kind) {
            (false, _) => CheckIn::Unknown,
            (true, "r") => CheckIn::Drawn { drawn },
            (true, _) => CheckIn::Waiting {
                ahead: number.saturating_sub(head),
            },
        };
        (found, Outcome::default())
    }

    async fn touch(&self, pass: u64, client: u64, now: Instant, limits: &Limits) -> bool {
        let session = limits.session;
        let key = match self.route(pass) {
            Id::Local(local) => return self.local.touch(local, client, now, limits).await,
            Id::Foreign | Id::Draw(_) => return false,
            Id::Ticket(seq) => seq.to_string(),
            Id::Direct(n) => format!("d{n}"),
        };
        let ttl_ms = self
            .ttl_ms
            .load(Ordering::Relaxed)
            .max((session * TTL_FACTOR).as_millis() as u64);
        let session_us = session.as_micros().to_string();
        let ttl = ttl_ms.to_string();
        let now_us = self.now_arg(now);
        let max_session_us = limits.max_session.as_micros().to_string();
        let client = client.to_string();
        let in_use: Option<i64> = self
            .redis
            .invoke(
                Some(StoreFeature::Room),
                &TOUCH,
                &self.key_refs(),
                &[
                    key.as_bytes(),
                    session_us.as_bytes(),
                    ttl.as_bytes(),
                    now_us.as_bytes(),
                    max_session_us.as_bytes(),
                    client.as_bytes(),
                ],
            )
            .await;
        match in_use {
            Some(in_use) => in_use == 1,
            // It cannot be checked: a checkout under way is not sent back to
            // the line because Redis failed.
            None => true,
        }
    }

    async fn stats(&self, now: Instant, limits: &Limits) -> LineStats {
        if let Some(reply) = self.run(&STATS, now, limits, 0, &[]).await {
            if let Some(stats) = reply.stats() {
                self.seen.lock().drawn = stats.drawn;
                return stats;
            }
        }
        self.missed();
        self.local.stats(now, limits).await
    }

    async fn control(&self) -> Control {
        let ttl = CONTROL_TTL.as_millis().to_string();
        let value: Option<String> = self
            .redis
            .invoke(
                Some(StoreFeature::Room),
                &CONTROL,
                &[&self.control_key],
                &[ttl.as_bytes()],
            )
            .await;
        let mut control = self.control.lock();
        if let Some(value) = value {
            *control = parse_control(&value);
        }
        *control
    }

    async fn set_control(&self, control: Control) {
        *self.control.lock() = control;
        self.local.set_control(control).await;
        let ttl = CONTROL_TTL.as_millis().to_string();
        let _: Option<String> = self
            .redis
            .invoke(
                Some(StoreFeature::Room),
                &CONTROL,
                &[&self.control_key],
                &[ttl.as_bytes(), control.as_str().as_bytes()],
            )
            .await;
    }
}

/// The setting Redis holds; anything else (never set) is `auto`.
fn parse_control(value: &str) -> Control {
    match value {
        "open" => Control::Open,
        "closed" => Control::Closed,
        "paused" => Control::Paused,
        _ => Control::Auto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedisConfig;
    use crate::telemetry::Metrics;

    fn line(prefix: &str) -> RedisLine {
        let settings = RedisConfig {
            url: "redis://127.0.0.1:1/0".to_owned(),
            password: None,
            key_prefix: prefix.to_owned(),
            timeout: Duration::from_millis(20),
            pool_size: 1,
        };
        let Some(redis) = Redis::new(settings, Metrics::new().store.clone()) else {
            panic!("valid settings");
        };
        RedisLine::new(Arc::new(redis), "sale", Arc::new(MemoryLine::new()))
    }

    #[test]
    fn every_instance_has_the_same_epoch_for_a_room_and_prefix() {
        let (a, b) = (line("shop:"), line("shop:"));
        assert_eq!(a.epoch(), b.epoch());
        assert_ne!(a.epoch(), 0);
        assert_ne!(a.epoch(), line("other:").epoch());
        assert_eq!(a.keys[0], b"shop:room:sale:s");
    }

    #[test]
    fn ids_of_the_fallback_line_never_pass_for_shared_ones() {
        let a = line("shop:");
        let mut b = line("shop:");
        b.tag = (a.tag + 1) & TAG_MASK;
        for local in [
            0,
            7,
            DIRECT_BIT | 3,
            DRAW_BIT | (DIRECT_BIT - 1),
            DRAW_BIT | 5,
        ] {
            let id = a.local_id(local);
            assert_eq!(a.route(id), Id::Local(local), "{local:x} as {id:x}");
            assert_eq!(b.route(id), Id::Foreign, "another instance's {local:x}");
        }
        let base = 1_760_000_000_000u64 * 1024;
        assert_eq!(a.route(base), Id::Ticket(base));
        assert_eq!(a.route(DIRECT_BIT | base), Id::Direct(base));
        assert_eq!(a.route(DRAW_BIT | 12), Id::Draw(12));
        assert_eq!(a.route(SHARED_LIMIT), Id::Foreign);
        assert_eq!(a.route(DRAW_BIT | DRAW_LIMIT), Id::Foreign);
    }

    #[tokio::test]
    async fn without_redis_the_room_is_served_from_memory() {
        let a = line("shop:");
        let limits = Limits {
            may_call: true,
            paused: false,
            open: true,
            max_active: Some(1),
            per_second: None,
            session: Duration::from_secs(60),
            max_session: Duration::from_secs(600),
            max_waiting: None,
            ticket_timeout: Duration::from_secs(60),
        };
        let now = Instant::now();
        let (first, _) = a.arrive(7, now, &limits, false).await;
        let Arrival::Admitted(pass) = first else {
            panic!("{first:?}")
        };
        assert!(a.touch(pass.pass, 7, now, &limits).await);
        let (second, _) = a.arrive(7, now, &limits, false).await;
        let Arrival::Waiting { seq, ahead: 0 } = second else {
            panic!("{second:?}")
        };
        assert_eq!(a.route(seq), Id::Local(1));
        assert_eq!(
            a.check_in(seq, 7, now, &limits).await.0,
            CheckIn::Waiting { ahead: 0 }
        );
        // A shared pass cannot be checked: let through.
        assert!(a.touch(1_760_000_000_000 * 1024, 7, now, &limits).await);
        a.set_control(Control::Paused).await;
        assert_eq!(a.control().await, Control::Paused);
    }
}
