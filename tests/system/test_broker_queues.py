"""What the broker queues for an offline persistent session (issue 17, item 2; decision
0014): at most MAX_QUEUED_MESSAGES beyond its in-flight window; newer messages are dropped
and counted in $SYS/broker/publish/messages/dropped, where an operator sees them. The
session gets the oldest ones, in order, then live traffic as before."""

from __future__ import annotations

from broker.runtime import MAX_QUEUED_MESSAGES
from tests.support.bus import Inbox, connected, wait_for
from wire import topics

TOPIC = f"{topics.ROOT}/test/queue"
OVER = 50  # messages beyond the bound


def test_an_offline_session_keeps_the_bound_and_the_rest_is_counted_dropped(mosquitto, make_client):
    away = make_client(mosquitto.port, "away")
    away.subscribe(TOPIC, Inbox())
    connected(away)
    away.close()  # persistent session: the broker queues for it
    sys = Inbox()
    watcher = make_client(mosquitto.port, "sys-watcher", clean_session=True)
    watcher.subscribe("$SYS/broker/publish/messages/dropped", sys)
    connected(watcher)
    publisher = connected(make_client(mosquitto.port, "publisher", max_inflight=0))
    infos = [publisher.publish(TOPIC, b"%d" % i) for i in range(MAX_QUEUED_MESSAGES + OVER)]
    assert all(publisher.wait_acked(info, 60) for info in infos)
    # $SYS is updated every sys_interval (10 s by default), retained, and only when it changed.
    wait_for(
        lambda: sys.messages and int(sys.messages[-1][1]) >= OVER, 30, lambda: f"dropped >= {OVER}: {sys.messages}"
    )

    inbox = Inbox()
    back = make_client(mosquitto.port, "away")
    back.subscribe(TOPIC, inbox)
    connected(back)
    publisher.publish(TOPIC, b"live")
    got = inbox.wait_count(MAX_QUEUED_MESSAGES + 1, 60)
    assert [payload for _, payload, _ in got] == [b"%d" % i for i in range(MAX_QUEUED_MESSAGES)] + [b"live"]
    assert int(sys.messages[-1][1]) == OVER, "exactly the messages beyond the bound were dropped"
