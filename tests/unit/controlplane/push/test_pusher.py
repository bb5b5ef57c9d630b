"""The push stage without sockets: shared views, moves on Sidecar changes, named subscriptions
(the control plane's side of on-demand discovery), herds and backpressure bookkeeping."""

import asyncio

from controlplane.model import EgressHost, ResourceKey, Service, ServiceEndpoint, Sidecar
from controlplane.push.pusher import ByteBudget, Pusher
from controlplane.store import Store
from controlplane.world import NodeInfo, service_key
from controlplane.xds.protocol import Target
from lightmesh import types

SHOP = NodeInfo(id="a", workload="a", namespace="shop")
SHOP_2 = NodeInfo(id="b", workload="b", namespace="shop")


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def service(name: str, namespace: str) -> Service:
    endpoint = ServiceEndpoint(address="127.0.0.1", port=1, workload=name)
    return Service(name=name, namespace=namespace, endpoints=(endpoint,))


def store_with(*services: Service) -> Store:
    store = Store()
    store.update("test", {service_key(s): s for s in services}, at=0)
    return store


def routes(pusher: Pusher, node: NodeInfo) -> list[str]:
    return sorted(pusher.connections[node.id].view.sets[types.ROUTES].current.versions)


async def test_sidecars_of_one_scope_share_one_view_and_move_when_a_sidecar_applies() -> None:
    store = store_with(service("web", "shop"), service("db", "other"))
    pusher = Pusher(store)
    a, b = await pusher.open(SHOP), await pusher.open(SHOP_2)
    assert a.view is b.view and len(pusher.views) == 1
    assert routes(pusher, SHOP) == [fqdn("db", "other"), fqdn("web", "shop")]
    sidecar = Sidecar(
        key=ResourceKey("Sidecar", "shop", "default"),
        selector=None,
        egress=(EgressHost(namespace=".", host="*"),),
    )
    change = store.update("test", {sidecar.key: sidecar}, at=1)
    assert change is not None
    await pusher.flush(change)
    assert a.view is b.view and routes(pusher, SHOP) == [fqdn("web", "shop")]
    assert a.wake.is_set() and b.wake.is_set()
    assert len(pusher.views) == 1  # the unscoped view went with its last stream
    pusher.close(a)
    pusher.close(b)
    assert pusher.views == {}


async def test_a_named_subscription_widens_one_streams_scope() -> None:
    store = store_with(service("web", "shop"), service("db", "other"))
    sidecar = Sidecar(
        key=ResourceKey("Sidecar", "shop", "default"),
        selector=None,
        egress=(EgressHost(namespace=".", host="*"),),
    )
    store.update("test", {sidecar.key: sidecar}, at=0)
    pusher = Pusher(store)
    a = await pusher.open(SHOP)
    await pusher.open(SHOP_2)
    a.protocol.on_request(type_url=types.ROUTES, subscribe=["*", fqdn("db", "other")], now=0)
    await pusher.resubscribe(a)
    assert routes(pusher, SHOP) == [fqdn("db", "other"), fqdn("web", "shop")]
    assert f"outbound||{fqdn('db', 'other')}" in a.view.sets[types.CLUSTER].current.versions
    assert routes(pusher, SHOP_2) == [fqdn("web", "shop")]  # the other stream keeps its scope
    # A name that does not exist is answered at once as removed.
    a.protocol.on_request(type_url=types.ROUTES, subscribe=["nope.example"], now=0)
    await pusher.resubscribe(a)
    snapshot = a.view.sets[types.ROUTES].current
    plan = a.protocol.plan(
        types.ROUTES,
        Target(tag=snapshot.tag, versions=snapshot.versions),
        changed=a.view.sets[types.ROUTES].changed_since,
        now=0,
    )
    assert plan is not None and plan.remove == ("nope.example",)


async def test_herd_and_backpressure_bookkeeping() -> None:
    store = store_with(service("web", "shop"))
    pusher = Pusher(store, initial_pushes=1)
    a, b = await pusher.open(SHOP), await pusher.open(SHOP_2)
    assert pusher.awaiting_first == 2 and pusher._in_herd()
    pusher.first_pushed(a)
    assert pusher._in_herd()  # a herd lasts until no stream waits
    pusher.close(b)
    assert pusher.awaiting_first == 0 and not pusher._in_herd()
    change = store.update("test", {service_key(service("web", "shop")): service("web", "shop").__class__(
        name="web", namespace="shop", endpoints=())}, at=2)  # fmt: skip
    assert change is not None
    await pusher.flush(change)
    assert not pusher._served.is_set()  # the next flush waits until `a` was served
    pusher.served(a)
    assert pusher._served.is_set()


async def test_a_herd_the_process_accepts_slowly_is_still_a_herd() -> None:
    # Streams arriving faster than the gate admits, though few wait inside the process at once
    # (the control plane accepts them more slowly than they connect), hold flushes back too.
    store = store_with(service("web", "shop"))
    now = [0.0]
    pusher = Pusher(store, initial_pushes=2, clock=lambda: now[0])
    nodes = [NodeInfo(id=f"n{i}", workload="w", namespace="shop") for i in range(4)]
    conns = []
    for node in nodes:
        conns.append(await pusher.open(node))
        now[0] += 0.1
    for conn in conns[:3]:
        pusher.first_pushed(conn)  # each is served soon after it arrived
    assert pusher.awaiting_first == 1 and pusher._in_herd()  # 4 arrivals within the window
    pusher.first_pushed(conns[3])
    assert not pusher._in_herd()  # none waits: over
    now[0] += 5
    late = await pusher.open(NodeInfo(id="late", workload="w", namespace="shop"))
    assert pusher.awaiting_first == 1 and not pusher._in_herd()  # one arrival is no herd
    pusher.close(late)


async def test_the_byte_budget_admits_in_order_and_lets_one_oversized_response_through() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    second = asyncio.ensure_future(budget.acquire(60))
    third = asyncio.ensure_future(budget.acquire(10))  # fits, but waits behind `second` (FIFO)
    await asyncio.sleep(0)
    assert not second.done() and not third.done() and budget.waiting == 2
    budget.release(60)
    await asyncio.sleep(0)
    assert second.done() and third.done() and budget.used == 70
    budget.release(70)
    await budget.acquire(500)  # larger than the budget: alone in flight, it goes
    assert budget.used == 500
    blocked = asyncio.ensure_future(budget.acquire(1))
    await asyncio.sleep(0)
    blocked.cancel()  # a stream that ends while waiting gives its place up
    await asyncio.sleep(0)
    budget.release(500)
    assert budget.used == 0 and budget.waiting == 0


async def test_a_hold_on_the_byte_budget_ends_by_itself_when_its_sidecar_never_answers() -> None:
    budget = ByteBudget(100)
    release = await budget.hold(100, at_most=0.01)  # a sidecar that will never ACK
    waiting = asyncio.ensure_future(budget.acquire(50))  # every other stream's next push
    await asyncio.sleep(0)
    assert not waiting.done() and budget.used == 100
    await asyncio.wait_for(waiting, timeout=30)  # freed when the hold lapsed, not by an ACK
    assert budget.used == 50
    release()  # the late ACK: nothing more to give back
    assert budget.used == 50
    answered = await budget.hold(50, at_most=3600)
    answered()
    answered()  # idempotent: a NACK after the stream ended, say
    assert budget.used == 50
