"""Which commands the redis proxy knows and how each is served (Envoy 1.40's supported command set).

Envoy creates `command.<name>.*` stats for all of `SUPPORTED` when the filter is built, whether used or not, so
pylon does too. How a command is split: a simple command hashes its first argument (the key), an eval command
its fourth; MGET, MSET and the summing commands (DEL, EXISTS, TOUCH, UNLINK) become one command per key, joined
back (`splitter.py`). Commands Envoy serves in other ways (transactions, the commands sent to every shard) are
`NOT_YET` in pylon: answered with an error naming them, and counted as unsupported.
"""

from __future__ import annotations

#: every command Envoy 1.40 accepts (its command stats, by name), observed from its /stats
SUPPORTED = frozenset("""
append bf.add bf.card bf.exists bf.info bf.insert bf.loadchunk bf.madd bf.mexists bf.reserve bf.scandump bitcount
bitfield bitfield_ro bitop bitpos cluster config copy decr decrby del discard dump eval evalsha exec exists expire
expireat flushall flushdb geoadd geodist geohash geopos georadius georadius_ro georadiusbymember
georadiusbymember_ro geosearch geosearchstore get getbit getdel getex getrange getset hdel hello hexists hexpire
hexpireat hexpiretime hget hgetall hincrby hincrbyfloat hkeys hlen hmget hmset hpersist hpexpire hpexpireat
hpexpiretime hpttl hrandfield hscan hset hsetnx hstrlen httl hvals incr incrby incrbyfloat info.shard info keys
lindex linsert llen lmove lpop lpos lpush lpushx lrange lrem lset ltrim mget mset msetnx multi object persist
pexpire pexpireat pfadd pfcount pfmerge psetex pttl publish randomkey rename renamenx restore role rpop rpoplpush
rpush rpushx sadd scan scard script sdiff sdiffstore select set setbit setex setnx setrange sinter sinterstore
sismember slowlog smembers smismember smove sort sort_ro spop srandmember srem sscan strlen substr sunion
sunionstore touch ttl type unlink unwatch watch xack xadd xautoclaim xclaim xdel xlen xpending xrange xrevrange
xtrim zadd zcard zcount zdiff zdiffstore zincrby zinter zinterstore zlexcount zmscore zpopmax zpopmin
zrandmember zrange zrangebylex zrangebyscore zrangestore zrank zrem zremrangebylex zremrangebyrank
zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan zscore zunion zunionstore
""".split())

#: split per key, integer replies summed
SUM = frozenset({"del", "exists", "touch", "unlink"})
#: hashed on the fourth argument (EVAL script numkeys key ...)
EVAL = frozenset({"eval", "evalsha"})
#: answered by the proxy itself, never sent upstream (not among the command stats but hello)
LOCAL = frozenset({"auth", "echo", "ping", "time", "quit", "hello"})
#: Envoy serves these with transactions or by sending them to every shard; pylon does not yet
NOT_YET = frozenset({
    "multi", "exec", "discard", "watch", "unwatch", "keys", "scan", "select", "info", "info.shard", "cluster",
    "config", "flushall", "flushdb", "randomkey", "role", "script", "slowlog", "msetnx", "bitop", "publish",
    "pfmerge", "object",
})


def kind(name: str) -> str:
    """How `name` (lower case) is served: local, not_yet, unknown, mget, mset, sum, eval or simple."""
    if name in LOCAL:
        return "local"
    if name not in SUPPORTED:
        return "unknown"
    if name in NOT_YET:
        return "not_yet"
    if name in ("mget", "mset"):
        return name
    if name in SUM:
        return "sum"
    if name in EVAL:
        return "eval"
    return "simple"
