"""Simulated node agents for bench/k8s_scale.py: real gRPC Watch clients
(Debian's python3-grpcio) of mtls-ca's /mtlsd.mesh.v1.MeshConfig/Watch,
raw bytes in and out, with the few protobuf wire fields they need decoded
by hand (there is no protoc for Python here).

A worker process (run_worker, started with multiprocessing's "spawn") runs
one thread per agent (two with destinations on demand: the second makes
the agent's Want calls). Each thread stamps a message with time.monotonic()
(CLOCK_MONOTONIC, the clock the API server stand-in stamps its watch
events with) as soon as grpc hands it over, then decodes it and keeps, per
agent: every message's (time, size, version, delta); its node workloads
and when each pod came or went; and, for the agents in the destination
sample, the destination addresses and when each came or went, and the
endpoints of the Service addresses its pods call (spec "calls") and when
each came or went. With destinations on demand (spec "on_demand") every
agent opens its Watch with on_demand_destinations, a watch_id and the
first half of its calls in wanted_destinations, then, once the first
snapshot is in, asks for the rest with Want, --want-batch addresses a
call, one call after the other: each call's send and answer times are
kept, and for each address when the stream first brought its entry (or
listed it unresolved). Nothing
else of a message is kept, so memory stays flat however many snapshots
arrive.

The driver talks to a worker over a multiprocessing Pipe:
  worker -> driver  ("first", agent, opened_t, first_t, size) | ("error", agent, text)
                    ("wants", agent, calls): its Want calls are done and answered
  driver -> worker  "progress" -> ("progress", messages, last_t)
                    "stop"     -> ("result", {agent: AgentLog.as_dict()})
"""

import threading
import time

WATCH = "/mtlsd.mesh.v1.MeshConfig/Watch"
WANT = "/mtlsd.mesh.v1.MeshConfig/Want"
WANT_TIMEOUT_S = 30  # one Want call, and then its entries on the stream
CP_NAME = "mtls-ca"  # the DNS SAN of the server certificate (certs/mkpki.sh --control-plane)
MAX_MESSAGE_BYTES = 4 << 20  # what an agent accepts (mtls-ca refuses larger snapshots)

# MeshSnapshot field numbers (proto/mtlsd/mesh.proto, plus the delta contract).
SNAP_VERSION, SNAP_DESTINATIONS, SNAP_NODE_WORKLOADS = 1, 4, 6
SNAP_DELTA, SNAP_BASE_VERSION, SNAP_REMOVED = 7, 8, 9
SNAP_ON_DEMAND, SNAP_UNRESOLVED = 10, 11
DEST_ENDPOINTS = 4  # Destination.endpoints (Endpoint{address=1, spiffe_id=2})


# ---- protobuf wire format, by hand ------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _bytes_field(number, data):
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode_watch_request(node_id, spiffe_id="", last_applied_version="", accept_deltas=False,
                         on_demand=False, watch_id="", wanted=()):
    """WatchRequest{node_id=1, spiffe_id=2, last_applied_version=3, accept_deltas=4,
    on_demand_destinations=5, watch_id=6, wanted_destinations=7}."""
    out = b""
    for number, text in ((1, node_id), (2, spiffe_id), (3, last_applied_version)):
        if text:
            out += _bytes_field(number, text.encode())
    if accept_deltas:
        out += _varint(4 << 3 | 0) + b"\x01"
    if on_demand:
        out += _varint(5 << 3 | 0) + b"\x01"
    if watch_id:
        out += _bytes_field(6, watch_id.encode())
    for address in wanted:
        out += _bytes_field(7, address.encode())
    return out


def encode_want_request(watch_id, addresses):
    """WantRequest{watch_id=1, addresses=2}."""
    return _bytes_field(1, watch_id.encode()) + b"".join(_bytes_field(2, a.encode()) for a in addresses)


def decode_want_response(buf):
    """WantResponse.wanted (field 1)."""
    for n, wire, value in fields(buf):
        if n == 1 and wire == 0:
            return value
    return 0


def _varint_at(buf, i):
    """(value, index after it) of the varint at buf[i]."""
    b = buf[i]
    if b < 0x80:
        return b, i + 1
    value, shift = b & 0x7F, 7
    while True:
        i += 1
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7


def fields(buf, start=0, end=None):
    """Yields (field number, wire type, value) of the message in
    buf[start:end]: an int for a varint, a (start, end) span for a
    length-delimited field; fixed32/64 are yielded as spans too."""
    i = start
    end = len(buf) if end is None else end
    while i < end:
        key, i = _varint_at(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint_at(buf, i)
            yield key >> 3, wire, value
            continue
        if wire == 2:
            n, i = _varint_at(buf, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
        else:
            raise ValueError("wire type %d (field %d) is not used by mesh.proto" % (wire, key >> 3))
        if i + n > end:
            raise ValueError("field %d runs past the end of its message" % (key >> 3))
        yield key >> 3, wire, (i, i + n)
        i += n
    if i != end:
        raise ValueError("the message ends inside a field")


def _text(buf, span):
    return buf[span[0]:span[1]].decode()


def _first_bytes(buf, start, end, number):
    """Field |number| (a string) of the message in buf[start:end], as bytes."""
    for n, wire, value in fields(buf, start, end):
        if n == number and wire == 2:
            return buf[value[0]:value[1]]
    return b""


def _endpoints(buf, start, end):
    """The endpoint addresses (bytes) of the Destination in buf[start:end]."""
    return frozenset(_first_bytes(buf, *v, 1) for n, w, v in fields(buf, start, end)
                     if n == DEST_ENDPOINTS and w == 2)


def decode_snapshot(buf, want_destinations, endpoints_of=None):
    """The MeshSnapshot fields the bench needs, as a dict:
    version, delta, base_version, node_workloads (None when absent, else
    {"node": name, "pods": {"ns/pod": [ips]}}), destinations (addresses as
    bytes, or None when not wanted), removed [(field, key)], on_demand
    (field 10), unresolved (field 11's addresses, as bytes), endpoints
    ({address: frozenset of endpoint addresses} of the destinations whose
    address is in the set |endpoints_of|, bytes).

    A full snapshot at cluster scale holds some 10,000 destinations, so the
    top level is walked inline (no generator per field) and a destination
    is only looked into when wanted."""
    snap = {"version": "", "delta": False, "base_version": "", "node_workloads": None,
            "destinations": [] if want_destinations else None, "removed": [],
            "on_demand": False, "unresolved": [], "endpoints": {}}
    dests = snap["destinations"]
    eps = snap["endpoints"] if endpoints_of else None
    i, end = 0, len(buf)
    while i < end:
        key = buf[i]  # one-byte keys and lengths inline: this loop runs 10,000 times a snapshot
        if key < 0x80:
            i += 1
        else:
            key, i = _varint_at(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint_at(buf, i)
            if number == SNAP_DELTA:
                snap["delta"] = bool(value)
            elif number == SNAP_ON_DEMAND:
                snap["on_demand"] = bool(value)
            continue
        if wire != 2:
            raise ValueError("field %d has wire type %d, which mesh.proto does not use" % (number, wire))
        n = buf[i]
        if n < 0x80:
            i += 1
        else:
            n, i = _varint_at(buf, i)
        start, i = i, i + n
        if i > end:
            raise ValueError("field %d runs past the end of the snapshot" % number)
        if number == SNAP_DESTINATIONS:
            if dests is not None:
                if n > 2 and buf[start] == 0x0A and buf[start + 1] < 0x80:  # address (field 1) first,
                    address = buf[start + 2:start + 2 + buf[start + 1]]  # as encoders write it
                else:
                    address = _first_bytes(buf, start, i, 1)
                dests.append(address)
                if eps is not None and address in endpoints_of:
                    eps[address] = _endpoints(buf, start, i)
        elif number == SNAP_VERSION:
            snap["version"] = buf[start:i].decode()
        elif number == SNAP_NODE_WORKLOADS:
            node, pods = "", {}
            for n2, w, v in fields(buf, start, i):
                if n2 == 1 and w == 2:
                    node = _text(buf, v)
                elif n2 == 2 and w == 2:
                    ips, namespace, pod = [], "", ""
                    for wn, ww, wv in fields(buf, *v):
                        if wn == 2 and ww == 2:
                            ips.append(_text(buf, wv))
                        elif wn == 3 and ww == 2:
                            namespace = _text(buf, wv)
                        elif wn == 4 and ww == 2:
                            pod = _text(buf, wv)
                    pods["%s/%s" % (namespace, pod)] = ips
            snap["node_workloads"] = {"node": node, "pods": pods}
        elif number == SNAP_BASE_VERSION:
            snap["base_version"] = buf[start:i].decode()
        elif number == SNAP_REMOVED:
            field, rkey = 0, ""
            for n2, w, v in fields(buf, start, i):
                if n2 == 1 and w == 0:
                    field = v
                elif n2 == 2 and w == 2:
                    rkey = _text(buf, v)
            snap["removed"].append((field, rkey))
        elif number == SNAP_UNRESOLVED:
            snap["unresolved"].append(_first_bytes(buf, start, i, 1))
    return snap


# ---- one agent ---------------------------------------------------------------


class AgentLog:
    """What one agent saw: the state it holds and when it changed."""

    def __init__(self, spec):
        self.index, self.node, self.sample = spec["index"], spec["node"], spec["sample"]
        self.on_demand = spec.get("on_demand", False)
        # Destination addresses are followed on the sampled agents, and on
        # every agent with destinations on demand (a few hundred entries).
        self.track_dests = self.sample or self.on_demand
        calls = [a.encode() for a in spec.get("calls", ())]
        self.calls = frozenset(calls)  # the Service addresses its pods call
        self.endpoints_of = self.calls if self.sample else None  # whose endpoints are followed
        self.opened_t = None
        self.messages = []  # (t, bytes, version, delta)
        self.pods = None  # {"ns/pod": [ips]}: its node workloads now
        self.pod_log = []  # (t, [came], [went])
        self.dests = set()  # destination addresses now, as bytes
        self.dest_log = []  # (t, [came], [went])  (sample agents only)
        self.unresolved = set()  # MeshSnapshot.unresolved now, as bytes
        self.on_demand_held = False  # MeshSnapshot.on_demand_destinations now
        self.entry_t = {}  # call address -> when the stream first had its entry or listed it unresolved
        self.endpoints = {}  # call address -> its endpoint addresses now (sample agents)
        self.ep_log = []  # (t, address, [came], [went])
        self.want_log = []  # (sent_t, answered_t, [addresses], WantResponse.wanted)
        self.version = ""
        self.problems = []  # what went wrong, in words
        self.wrong_node = 0  # snapshots naming another node in node_workloads

    def apply(self, t, raw):
        snap = decode_snapshot(raw, self.track_dests, self.endpoints_of)
        self.messages.append((t, len(raw), snap["version"], snap["delta"]))
        if snap["delta"] and snap["base_version"] != self.version:
            self.problems.append("delta %s on base %s, but this agent holds %s"
                                 % (snap["version"], snap["base_version"], self.version or "nothing"))
        self.version = snap["version"]
        removed = set(snap["removed"])
        nw = snap["node_workloads"]
        if nw is not None:
            if nw["node"] != self.node:
                self.wrong_node += 1
            self._pods_now(t, nw["pods"])
        elif (SNAP_NODE_WORKLOADS, "") in removed or not snap["delta"]:
            self._pods_now(t, {})  # a full snapshot without it, or a delta that removes it
        if snap["on_demand"]:
            self.on_demand_held = True
        elif not snap["delta"] or (SNAP_ON_DEMAND, "") in removed:
            self.on_demand_held = False
        gone = {key.encode() for field, key in removed if field == SNAP_DESTINATIONS}
        if snap["delta"]:
            self.unresolved = (self.unresolved | set(snap["unresolved"])) - {
                key.encode() for field, key in removed if field == SNAP_UNRESOLVED}
        else:
            self.unresolved = set(snap["unresolved"])
        if self.track_dests:
            if snap["delta"]:
                now = (self.dests | set(snap["destinations"])) - gone
            else:
                now = set(snap["destinations"])
            came, went = now - self.dests, self.dests - now
            if self.sample and (came or went):
                self.dest_log.append((t, sorted(d.decode() for d in came), sorted(d.decode() for d in went)))
            self.dests = now
            if self.on_demand:
                for a in (came | self.unresolved) & self.calls:
                    self.entry_t.setdefault(a, t)
        if self.endpoints_of is not None:
            now_eps = dict(self.endpoints) if snap["delta"] else {}
            for a in gone:
                now_eps.pop(a, None)
            now_eps.update(snap["endpoints"])
            for a in set(now_eps) | set(self.endpoints):
                before, after = self.endpoints.get(a, frozenset()), now_eps.get(a, frozenset())
                if before != after:
                    self.ep_log.append((t, a.decode(), sorted(e.decode() for e in after - before),
                                        sorted(e.decode() for e in before - after)))
            self.endpoints = now_eps

    def _pods_now(self, t, pods):
        before = self.pods or {}
        came = [p for p in pods if p not in before]
        went = [p for p in before if p not in pods]
        if came or went or self.pods is None:
            self.pod_log.append((t, came, went))
        self.pods = pods

    def as_dict(self):
        return {"index": self.index, "node": self.node, "sample": self.sample,
                "opened_t": self.opened_t, "messages": self.messages, "pod_log": self.pod_log,
                "dest_log": self.dest_log, "problems": self.problems[:20],
                "num_problems": len(self.problems), "wrong_node": self.wrong_node,
                "pods_now": sorted(self.pods or {}),
                "on_demand_held": self.on_demand_held,
                "dests_now": sorted(d.decode() for d in self.dests) if self.on_demand else None,
                "unresolved_now": sorted(d.decode() for d in self.unresolved),
                "entry_t": {a.decode(): t for a, t in self.entry_t.items()},
                "ep_log": self.ep_log, "want_log": self.want_log}


class Agent(threading.Thread):
    def __init__(self, spec, log, report):
        super().__init__(daemon=True)
        self.spec, self.log, self.report = spec, log, report
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified after each message
        self.call = None
        self.channel = None
        self.stopping = False
        self.wants = None  # the thread making the Want calls

    def run(self):
        import grpc  # in the worker process only

        spec, log = self.spec, self.log
        try:
            creds = grpc.ssl_channel_credentials(spec["root_pem"])
            options = [("grpc.ssl_target_name_override", CP_NAME), ("grpc.enable_http_proxy", 0),
                       # One connection per agent, as separate node agents have.
                       ("grpc.use_local_subchannel_pool", 1),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            self.channel = grpc.secure_channel(spec["target"], creds, options=options)
            watch = self.channel.unary_stream(WATCH)  # no (de)serializers: bytes in, bytes out
            on_demand = spec.get("on_demand", False)
            request = encode_watch_request(spec["node"], accept_deltas=spec["deltas"], on_demand=on_demand,
                                           watch_id=spec.get("watch_id", ""),
                                           wanted=spec.get("initial", ()) if on_demand else ())
            with self.lock:
                if self.stopping:
                    return
                log.opened_t = time.monotonic()
                # wait_for_ready: a connection attempt that fails (seen once in five full-size runs: the
                # client gave up a TLS handshake with "No such file or directory") is retried, as an
                # agent would; what mtls-ca answers (a refusal) still ends the call
                self.call = watch(request, metadata=self._metadata(), wait_for_ready=True)
            first = True
            for raw in self.call:
                t = time.monotonic()
                with self.lock:
                    log.apply(t, raw)
                    self.changed.notify_all()
                if first:
                    first = False
                    self.report(("first", log.index, log.opened_t, t, len(raw)))
                    if on_demand:
                        self.wants = threading.Thread(target=self._want_all, daemon=True)
                        self.wants.start()
            if not self.stopping:
                log.problems.append("the stream ended without an error")
                self.report(("error", log.index, "the stream ended"))
        except Exception as e:  # grpc.RpcError, or a message that does not decode
            self._failed(e)

    def _metadata(self):
        return [("authorization", "Bearer " + self.spec["token"])]

    def _failed(self, e):
        if not self.stopping:
            details = e.details() if hasattr(e, "details") else str(e)
            text = "%s: %s" % (type(e).__name__, details)
            with self.lock:
                self.log.problems.append(text)
            self.report(("error", self.log.index, text))

    def _want_all(self):
        """The rest of the agent's calls, --want-batch addresses a Want, each
        sent once the stream has brought the previous one's entries."""
        spec, log = self.spec, self.log
        try:
            want = self.channel.unary_unary(WANT)
            later, size = spec.get("later", []), max(1, spec.get("want_batch", 10))
            for k in range(0, len(later), size):
                batch = later[k:k + size]
                if self.stopping:
                    return
                sent = time.monotonic()
                answer = want(encode_want_request(spec["watch_id"], batch), metadata=self._metadata(),
                              timeout=WANT_TIMEOUT_S)
                answered = time.monotonic()
                wanted = decode_want_response(answer)
                keys = [a.encode() for a in batch]
                with self.lock:
                    log.want_log.append((sent, answered, batch, wanted))
                    if not self.changed.wait_for(lambda: self.stopping or all(a in log.entry_t for a in keys),
                                                 WANT_TIMEOUT_S):
                        missing = [a for a in batch if a.encode() not in log.entry_t]
                        raise RuntimeError("Want of %s answered (wanted=%d) but the stream did not bring %s "
                                           "within %d s" % (batch, wanted, missing, WANT_TIMEOUT_S))
            if not self.stopping:
                self.report(("wants", log.index, len(log.want_log)))
        except Exception as e:  # grpc.RpcError, or the entries did not come
            self._failed(e)

    def stop(self):
        with self.lock:
            self.stopping = True
            self.changed.notify_all()
            if self.call is not None:
                self.call.cancel()


def run_worker(conn, specs):
    """A worker process: one Agent thread per spec; answers the driver's
    "progress" and "stop" on |conn| until "stop"."""
    send_lock = threading.Lock()

    def report(msg):
        with send_lock:
            conn.send(msg)

    logs = {s["index"]: AgentLog(s) for s in specs}
    agents = [Agent(s, logs[s["index"]], report) for s in specs]
    for a in agents:
        a.start()
    try:
        while True:
            cmd = conn.recv()
            if cmd == "progress":
                with_msgs = [a.log.messages for a in agents]
                last = max((m[-1][0] for m in with_msgs if m), default=None)
                report(("progress", sum(len(m) for m in with_msgs), last))
            elif cmd == "stop":
                break
    except EOFError:
        pass  # the driver is gone
    for a in agents:
        a.stop()
    for a in agents:
        a.join(timeout=10)
    for a in agents:
        if a.channel is not None:
            a.channel.close()  # also ends a Want call still waiting for its answer
    for a in agents:
        if a.wants is not None:
            a.wants.join(timeout=5)
    result = {}
    for a in agents:
        with a.lock:
            result[a.log.index] = a.log.as_dict()
    try:
        report(("result", result))
    except (BrokenPipeError, OSError):
        pass
