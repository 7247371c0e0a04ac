//! Dead letters against a real `nats-server` (README, "Handlers"): they are listed with their
//! cause and origin, all or one consumer's; once the cause is fixed, republishing one (or all)
//! gets it handled and removes it from the dead-letter stream; a republished event does not
//! appear twice in its aggregate's history.
//!
//! Every test starts its own server; the handlers here have aggregates of their own (`dlq_*`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use eventbus::prelude::*;
use eventbus::{DeadLetter, ErrorKind};
use eventbus_tests::{wait_for, wait_until, NatsServer, Probe};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dlq_pay", name = "charged")]
struct Charged {
    #[event(aggregate_id)]
    id: String,
    amount: i64,
}

/// Whether the bug behind `dlq_charge`'s failures is fixed.
static CHARGE_FIXED: AtomicBool = AtomicBool::new(false);
/// `(aggregate id, event id)` of every charge handled.
static CHARGED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 5, backoff = ["100ms"])]
async fn dlq_charge(event: Charged, ctx: EventContext) -> Result<(), HandlerError> {
    if event.amount < 0 && !CHARGE_FIXED.load(Ordering::SeqCst) {
        return Err(HandlerError::permanent(format!(
            "charge {} has a negative amount {}",
            event.id, event.amount
        )));
    }
    CHARGED
        .lock()
        .unwrap()
        .push((event.id, ctx.event_id().to_owned()));
    Ok(())
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dlq_mail", name = "queued")]
struct MailQueued {
    #[event(aggregate_id)]
    id: String,
}

static MAIL_FIXED: AtomicBool = AtomicBool::new(false);
static MAILED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 2, backoff = ["100ms"])]
async fn dlq_mail(event: MailQueued) -> Result<(), HandlerError> {
    if !MAIL_FIXED.load(Ordering::SeqCst) {
        return Err(HandlerError::transient("smtp is down"));
    }
    MAILED.lock().unwrap().push(event.id);
    Ok(())
}

fn charged(id: &str) -> Vec<String> {
    CHARGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(a, _)| a == id)
        .map(|(_, e)| e.clone())
        .collect()
}

/// How many times each charge was handled.
fn charge_counts() -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (id, _) in CHARGED.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    counts
}

fn header<'a>(d: &'a DeadLetter, name: &str) -> Option<&'a str> {
    d.headers.get(name).map(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_handled_once_republished() {
    let server = NatsServer::start().await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("dlq")
        .only_handlers(["dlq_charge", "dlq_mail"])
        .start()
        .await
        .unwrap();
    let probe = Probe::new(&server).await;
    let (charge, mail) = ("dlq-dlq_charge", "dlq-dlq_mail");

    let mut published = BTreeMap::new();
    for (id, amount) in [("c1", 10), ("c2", -5), ("c3", -7), ("c4", 20)] {
        let p = bus
            .publish(&Charged {
                id: id.into(),
                amount,
            })
            .await
            .unwrap();
        published.insert(id, p);
    }
    let m1 = bus.publish(&MailQueued { id: "m1".into() }).await.unwrap();

    // Listed: all of them, or one consumer's.
    let all = wait_for(TIMEOUT, "three dead letters", || async {
        let all = bus.dead_letters(None).await.unwrap();
        (all.len() == 3).then_some(all)
    })
    .await;
    probe.settled(TIMEOUT, "DLQ_PAY", charge).await;
    probe.settled(TIMEOUT, "DLQ_MAIL", mail).await;
    assert!(
        all.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "oldest first"
    );
    let mut charges = bus.dead_letters(Some(charge)).await.unwrap();
    charges.sort_by_key(|d| d.original_sequence);
    assert_eq!(charges.len(), 2);
    for (d, (id, amount)) in charges.iter().zip([("c2", -5), ("c3", -7)]) {
        let p = &published[id];
        assert_eq!(d.consumer, charge);
        assert_eq!(d.reason, "permanent");
        assert_eq!(
            d.error,
            format!("charge {id} has a negative amount {amount}")
        );
        assert_eq!(d.original_subject, format!("dlq_pay.{id}.charged"));
        assert_eq!(d.original_stream, "DLQ_PAY");
        assert_eq!(d.original_sequence, p.sequence);
        assert_eq!(d.deliveries, 1);
        assert_eq!(header(d, "ce-id"), Some(p.id.as_str()));
        let body: Charged = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(
            body,
            Charged {
                id: id.into(),
                amount
            }
        );
        assert!(all.iter().any(|a| a.sequence == d.sequence));
    }
    let mails = bus.dead_letters(Some(mail)).await.unwrap();
    assert_eq!(mails.len(), 1);
    let d = &mails[0];
    assert_eq!(
        (d.reason.as_str(), d.deliveries, d.original_stream.as_str()),
        ("max_deliver", 2, "DLQ_MAIL")
    );
    assert!(d.error.contains("smtp is down"), "{}", d.error);
    assert_eq!(d.original_sequence, m1.sequence);
    assert_eq!(d.original_subject, "dlq_mail.m1.queued");
    assert!(bus
        .dead_letters(Some("dlq-nobody"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        charge_counts(),
        BTreeMap::from([("c1".into(), 1), ("c4".into(), 1)])
    );

    // Fixed: one republished is handled, as the same event, and leaves the dead-letter stream.
    CHARGE_FIXED.store(true, Ordering::SeqCst);
    let c2 = &charges[0];
    let again = bus.republish_dead_letter(c2.sequence).await.unwrap();
    assert_eq!(again.stream, "DLQ_PAY");
    assert_eq!(again.sequence, 5, "stored after the four charges");
    wait_until(TIMEOUT, "c2 is handled", || async {
        !charged("c2").is_empty()
    })
    .await;
    assert_eq!(
        charged("c2"),
        vec![published["c2"].id.clone()],
        "the handler sees the same event id"
    );
    let left = bus.dead_letters(Some(charge)).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![charges[1].sequence],
        "c2 left the dead-letter stream"
    );
    let err = bus
        .republish_dead_letter(c2.sequence)
        .await
        .expect_err("no longer there");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");

    // All the others.
    MAIL_FIXED.store(true, Ordering::SeqCst);
    let republished = bus.republish_dead_letters(None).await.unwrap();
    assert_eq!(republished.len(), 2);
    wait_until(TIMEOUT, "c3 and m1 are handled", || async {
        !charged("c3").is_empty() && MAILED.lock().unwrap().contains(&"m1".to_owned())
    })
    .await;
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    probe.settled(TIMEOUT, "DLQ_PAY", charge).await;
    probe.settled(TIMEOUT, "DLQ_MAIL", mail).await;
    assert_eq!(
        charge_counts(),
        BTreeMap::from([
            ("c1".into(), 1),
            ("c2".into(), 1),
            ("c3".into(), 1),
            ("c4".into(), 1)
        ]),
        "each charge handled once"
    );

    // The aggregate's history holds each event once: a republished copy is a redelivery, not
    // a new fact.
    let history = bus.read::<Charged>("c2").collect().await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].metadata.id, published["c2"].id);
    assert_eq!(history[0].sequence, published["c2"].sequence);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_republished_stays() {
    let server = NatsServer::start().await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("dlq")
        // A bus with a handler provisions the dead-letter stream; no mail is published here.
        .only_handlers(["dlq_mail"])
        .start()
        .await
        .unwrap();
    let probe = Probe::new(&server).await;

    // A dead letter whose original subject no stream stores any more, and a message in the
    // dead-letter stream that is no dead letter.
    let mut h = HeaderMap::new();
    h.insert("ce-id", "lost-1");
    h.insert("eventbus-dlq-reason", "permanent");
    h.insert("eventbus-dlq-error", "boom");
    h.insert("eventbus-dlq-consumer", "svc-lost");
    h.insert("eventbus-original-subject", "nowhere.x.happened");
    h.insert("eventbus-original-sequence", "7");
    h.insert("eventbus-original-stream", "NOWHERE");
    h.insert("eventbus-deliveries", "1");
    let lost = probe.publish_raw("dlq.svc-lost", h, b"{}").await;
    let stray = probe
        .publish_raw("dlq.svc-lost", HeaderMap::new(), b"not a dead letter")
        .await;

    let err = bus
        .republish_dead_letter(lost)
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.to_string().contains("nowhere.x.happened"), "{err}");
    let err = bus
        .republish_dead_letter(stray)
        .await
        .expect_err("not a dead letter");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    let err = bus
        .republish_dead_letter(9999)
        .await
        .expect_err("no such message");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");

    let listed = bus.dead_letters(Some("svc-lost")).await.unwrap();
    assert_eq!(listed.len(), 2, "both are still there");
    assert_eq!(listed[0].sequence, lost);
    assert_eq!(listed[0].original_subject, "nowhere.x.happened");
    assert_eq!((listed[0].original_sequence, listed[0].deliveries), (7, 1));
    assert!(
        listed[0].headers.get("Nats-Sequence").is_none(),
        "only the message's own headers"
    );
    let err = bus
        .republish_dead_letters(Some("svc-lost"))
        .await
        .expect_err("stops at the first failure");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    bus.shutdown().await.unwrap();
}

/// Before any dead-letter stream exists (a service without handlers, or with `ack = none` ones
/// only), there are no dead letters: an empty list, not an error; republishing one names what
/// is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_stream_there_are_no_dead_letters() {
    for memory in [false, true] {
        let server = if memory {
            None
        } else {
            Some(NatsServer::start().await)
        };
        let url = server
            .as_ref()
            .map_or_else(|| "memory://dlq-none".to_owned(), NatsServer::url);
        let builder = eventbus::builder().no_env().service("dlq-none").url(url);
        let bus = builder.without_handlers().start().await.unwrap();
        assert_eq!(bus.is_in_process(), memory);
        assert!(bus.dead_letters(None).await.unwrap().is_empty());
        assert!(bus
            .dead_letters(Some("dlq-none-x"))
            .await
            .unwrap()
            .is_empty());
        assert!(bus.republish_dead_letters(None).await.unwrap().is_empty());
        let err = bus.republish_dead_letter(1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("no dead-letter stream"), "{err}");
        bus.shutdown().await.unwrap();
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dlq_big", name = "noted")]
struct BigNoted {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler]
async fn dlq_big(_event: BigNoted) -> Result<(), HandlerError> {
    Ok(())
}

/// An event that cannot be decoded and is so large that its dead letter (body plus the
/// dead-letter headers) would pass the server's max payload is kept as a reference, not lost:
/// the dead letter holds the headers, says the body was omitted, and republishing takes the
/// body from the original (issue 15, item 4). Before, storing the dead letter failed, the event
/// was retried until the server's max deliver, and it left the stream neither handled nor
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_over_the_max_payload_is_kept_as_a_reference_to_the_original() {
    let server = NatsServer::builder()
        .config("max_payload: 4096")
        .start()
        .await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("dlq-big")
        .only_handlers(["dlq_big"])
        .start()
        .await
        .unwrap();
    let probe = Probe::new(&server).await;
    // Not JSON, and near the max payload: a foreign producer's message.
    let body: &'static [u8] = Box::leak(vec![b'x'; 3900].into_boxed_slice());
    let original = probe
        .publish_raw("dlq_big.b1.noted", HeaderMap::new(), body)
        .await;

    let dead = wait_for(TIMEOUT, "the event is dead-lettered", || async {
        bus.dead_letters(Some("dlq-big-dlq_big"))
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(dead.reason, "undecodable");
    assert_eq!(dead.body_omitted, Some(3900));
    assert!(dead.payload.is_empty());
    assert_eq!(
        (dead.original_stream.as_str(), dead.original_sequence),
        ("DLQ_BIG", original)
    );
    let info = probe.settled(TIMEOUT, "DLQ_BIG", "dlq-big-dlq_big").await;
    assert_eq!(info.num_ack_pending, 0, "terminated, not retried");

    // Republished, it carries the original's body again.
    let republished = bus.republish_dead_letter(dead.sequence).await.unwrap();
    let copy = probe.stored("DLQ_BIG", republished.sequence).await;
    assert_eq!(copy.payload.len(), 3900);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A message the client cannot parse
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dlq_poison", name = "noted")]
struct PoisonNoted {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

static POISON_NEIGHBOURS: Mutex<std::collections::BTreeSet<u32>> =
    Mutex::new(std::collections::BTreeSet::new());

#[event_handler(max_deliver = 2, ack_wait = "2s", backoff = ["100ms"], concurrency = 32)]
async fn dlq_poison_handler(event: PoisonNoted) -> Result<(), HandlerError> {
    POISON_NEIGHBOURS.lock().unwrap().insert(event.n);
    Ok(())
}

/// Publishes one message with the raw header block `header` over a plain TCP connection, as a
/// foreign producer can: the server stores headers it does not check.
fn hpub_raw(port: u16, subject: &str, header: &[u8], payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "the server greets: {line}");
    let mut out = stream;
    let mut msg = Vec::new();
    msg.extend_from_slice(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
    );
    msg.extend_from_slice(
        format!(
            "HPUB {subject} {} {}\r\n",
            header.len(),
            header.len() + payload.len()
        )
        .as_bytes(),
    );
    msg.extend_from_slice(header);
    msg.extend_from_slice(payload);
    msg.extend_from_slice(b"\r\nPING\r\n");
    out.write_all(&msg).unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "the server refused: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// A foreign producer's message whose header value is not UTF-8 is stored by the server, but
/// the client cannot parse its delivery and drops the connection, with the events behind it
/// on the wire. The worker then pulls one at a time, so its 10 neighbours in the same pull are
/// handled; the message itself, its deliveries run out, is dead-lettered by the safety net (the
/// server's max-deliveries advisory, the message fetched as data) with the reason
/// `undeliverable` and the bad header line named. Before: the neighbours went down with it on
/// every redelivery and the server gave up on all of them, neither handled nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_client_cannot_parse_is_dead_lettered_and_its_neighbours_are_handled() {
    let server = NatsServer::start().await;
    let bus = || {
        eventbus::builder()
            .no_env()
            .url(server.url())
            .service("dlq")
            .reconnect_wait(Duration::from_millis(50))
            .max_reconnects(None)
            .only_handlers(["dlq_poison_handler"])
            .start()
    };
    // Provisioned, then stopped: every event is stored before the handler pulls, so the first
    // pull brings them all, the bad one in the middle.
    bus().await.unwrap().shutdown().await.unwrap();
    let publisher = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("dlq-publisher")
        .without_handlers()
        .start()
        .await
        .unwrap();
    let noted = |n: u32| PoisonNoted {
        id: format!("p{n}"),
        n,
    };
    for n in 1..=10 {
        publisher.publish(&noted(n)).await.unwrap();
    }
    hpub_raw(
        server.port(),
        "dlq_poison.bad.noted",
        b"NATS/1.0\r\nx-bin: \xff\xfe\r\n\r\n",
        br#"{"id":"bad","n":0}"#,
    );
    for n in 12..=21 {
        publisher.publish(&noted(n)).await.unwrap();
    }

    let handling = bus().await.unwrap();
    wait_until(
        Duration::from_secs(40),
        "the 20 good events are handled",
        || async { POISON_NEIGHBOURS.lock().unwrap().len() == 20 },
    )
    .await;
    let dead = wait_for(
        Duration::from_secs(40),
        "the bad message is dead-lettered",
        || async {
            // Listed through the publisher's connection: the handler's drops each time the
            // bad message is delivered to it again.
            let all = publisher
                .dead_letters(Some("dlq-dlq_poison_handler"))
                .await
                .ok()?;
            (!all.is_empty()).then_some(all)
        },
    )
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.reason, "undeliverable");
    assert_eq!(d.original_sequence, 11);
    assert_eq!(d.original_subject, "dlq_poison.bad.noted");
    assert_eq!(&d.payload[..], br#"{"id":"bad","n":0}"#);
    assert!(
        d.error.contains(r"x-bin: \xff\xfe"),
        "the dead letter names the bad header line: {}",
        d.error
    );
    assert_eq!(
        *POISON_NEIGHBOURS.lock().unwrap(),
        (1..=10).chain(12..=21).collect(),
        "every good event handled, the bad one not"
    );
    handling.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}
