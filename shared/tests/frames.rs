//! The wire format, pinned: one exact JSON string per frame kind (so any wire change shows up
//! in a diff), round trips, batches, and malformed input answered with the right code.

use serde_json::json;
use switchboard_protocol::Payload;

/// A payload from a `json!` literal.
macro_rules! pj {
    ($($t:tt)*) => {
        Payload::from(json!($($t)*))
    };
}
use switchboard_protocol::codec::{self, FrameError};
use switchboard_protocol::{
    ClientFrame, ClientInfo, ErrorCode, Limits, Member, PresenceAction, Sender, ServerFrame,
    StreamPosition, Unrecovered,
};

fn pos(offset: u64) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: "e1".into(),
    }
}

/// Every client frame kind with its exact wire form.
fn client_cases() -> Vec<(ClientFrame, &'static str)> {
    vec![
        (
            ClientFrame::Hello {
                token: Some("jwt".into()),
                client: Some(ClientInfo {
                    name: "switchboard-web".into(),
                    version: "0.1.0".into(),
                }),
                resume: Some("s1".into()),
            },
            r#"{"type":"hello","token":"jwt","client":{"name":"switchboard-web","version":"0.1.0"},"resume":"s1"}"#,
        ),
        (
            ClientFrame::Hello {
                token: None,
                client: None,
                resume: None,
            },
            r#"{"type":"hello"}"#,
        ),
        (
            ClientFrame::Ping {
                id: Some("7".into()),
            },
            r#"{"type":"ping","id":"7"}"#,
        ),
        (ClientFrame::Ping { id: None }, r#"{"type":"ping"}"#),
        (
            ClientFrame::Subscribe {
                id: Some("s1".into()),
                channel: "room:lobby".into(),
                since: Some(pos(41)),
                rewind: Some(20),
                presence: Some(pj!({"name":"Ada"})),
            },
            r#"{"type":"subscribe","id":"s1","channel":"room:lobby","since":{"offset":41,"epoch":"e1"},"rewind":20,"presence":{"name":"Ada"}}"#,
        ),
        (
            ClientFrame::Subscribe {
                id: None,
                channel: "news".into(),
                since: None,
                rewind: None,
                presence: None,
            },
            r#"{"type":"subscribe","channel":"news"}"#,
        ),
        (
            ClientFrame::Unsubscribe {
                id: None,
                channel: "news".into(),
            },
            r#"{"type":"unsubscribe","channel":"news"}"#,
        ),
        (
            ClientFrame::Unsubscribe {
                id: Some("u1".into()),
                channel: "news".into(),
            },
            r#"{"type":"unsubscribe","id":"u1","channel":"news"}"#,
        ),
        (
            ClientFrame::Publish {
                id: Some("m1".into()),
                channel: "room:lobby".into(),
                data: pj!({"text":"hi"}),
                ephemeral: false,
                skip_self: false,
            },
            r#"{"type":"publish","id":"m1","channel":"room:lobby","data":{"text":"hi"}}"#,
        ),
        (
            ClientFrame::Publish {
                id: None,
                channel: "room:lobby".into(),
                data: pj!({"typing":true}),
                ephemeral: true,
                skip_self: false,
            },
            r#"{"type":"publish","channel":"room:lobby","data":{"typing":true},"ephemeral":true}"#,
        ),
        (
            ClientFrame::Publish {
                id: Some("m2".into()),
                channel: "room:lobby".into(),
                data: pj!({"text":"to the others"}),
                ephemeral: false,
                skip_self: true,
            },
            r#"{"type":"publish","id":"m2","channel":"room:lobby","data":{"text":"to the others"},"skip_self":true}"#,
        ),
        (
            ClientFrame::Request {
                id: "r1".into(),
                method: "presence".into(),
                params: pj!({"channel":"room:lobby"}),
            },
            r#"{"type":"request","id":"r1","method":"presence","params":{"channel":"room:lobby"}}"#,
        ),
        (
            ClientFrame::Request {
                id: "r2".into(),
                method: "time".into(),
                params: Payload::null(),
            },
            r#"{"type":"request","id":"r2","method":"time"}"#,
        ),
        (
            ClientFrame::Direct {
                id: Some("d1".into()),
                to: "c2".into(),
                data: pj!({"sdp":"offer"}),
            },
            r#"{"type":"direct","id":"d1","to":"c2","data":{"sdp":"offer"}}"#,
        ),
    ]
}

/// Every server frame kind with its exact wire form.
fn server_cases() -> Vec<(ServerFrame, &'static str)> {
    let ada = Member {
        user_id: "u1".into(),
        info: pj!({"name":"Ada"}),
        connections: 1,
    };
    vec![
        (
            ServerFrame::Welcome {
                client_id: "c1".into(),
                session_id: "s1".into(),
                resumed: false,
                protocol: 1,
                user_id: Some("u1".into()),
                heartbeat_ms: 25000,
                limits: Limits::default(),
                ts: Some(1700000000000),
            },
            r#"{"type":"welcome","client_id":"c1","session_id":"s1","protocol":1,"user_id":"u1","heartbeat_ms":25000,"limits":{"max_frame_bytes":65536,"max_batch":100,"max_subscriptions":100,"rate_per_sec":50,"rate_burst":100,"max_id_bytes":64,"max_presence_bytes":1024},"ts":1700000000000}"#,
        ),
        (
            ServerFrame::Pong {
                id: Some("7".into()),
                ts: Some(1700000000000),
            },
            r#"{"type":"pong","id":"7","ts":1700000000000}"#,
        ),
        (
            ServerFrame::Subscribed {
                channel: "room:lobby".into(),
                position: pos(42),
                recovered: true,
                unrecovered: None,
                presence: Some(vec![ada.clone()]),
            },
            r#"{"type":"subscribed","channel":"room:lobby","position":{"offset":42,"epoch":"e1"},"recovered":true,"presence":[{"user_id":"u1","info":{"name":"Ada"},"connections":1}]}"#,
        ),
        (
            ServerFrame::Subscribed {
                channel: "news".into(),
                position: pos(42),
                recovered: false,
                unrecovered: Some(Unrecovered::Trimmed),
                presence: None,
            },
            r#"{"type":"subscribed","channel":"news","position":{"offset":42,"epoch":"e1"},"unrecovered":"trimmed"}"#,
        ),
        (
            ServerFrame::Unsubscribed {
                channel: "news".into(),
            },
            r#"{"type":"unsubscribed","channel":"news"}"#,
        ),
        (
            ServerFrame::Message {
                channel: "room:lobby".into(),
                offset: Some(43),
                epoch: Some("e1".into()),
                from: Some(Sender {
                    client_id: "c1".into(),
                    user_id: Some("u1".into()),
                }),
                data: pj!({"text":"hi"}),
                ts: 1_700_000_000_000,
                ephemeral: false,
            },
            r#"{"type":"message","channel":"room:lobby","from":{"client_id":"c1","user_id":"u1"},"data":{"text":"hi"},"ts":1700000000000,"offset":43,"epoch":"e1"}"#,
        ),
        (
            ServerFrame::Message {
                channel: "room:lobby".into(),
                offset: None,
                epoch: None,
                from: Some(Sender {
                    client_id: "c1".into(),
                    user_id: None,
                }),
                data: pj!({"typing":true}),
                ts: 1_700_000_000_000,
                ephemeral: true,
            },
            r#"{"type":"message","channel":"room:lobby","from":{"client_id":"c1"},"data":{"typing":true},"ts":1700000000000,"ephemeral":true}"#,
        ),
        (
            ServerFrame::Presence {
                channel: "room:lobby".into(),
                action: PresenceAction::Join,
                member: ada,
                count: 1,
            },
            r#"{"type":"presence","channel":"room:lobby","action":"join","member":{"user_id":"u1","info":{"name":"Ada"},"connections":1},"count":1}"#,
        ),
        (
            ServerFrame::Ack {
                id: "m1".into(),
                offset: Some(43),
            },
            r#"{"type":"ack","id":"m1","offset":43}"#,
        ),
        (
            ServerFrame::Response {
                id: "r2".into(),
                result: pj!({"now_ms":1700000000000u64}),
            },
            r#"{"type":"response","id":"r2","result":{"now_ms":1700000000000}}"#,
        ),
        (
            ServerFrame::error(
                Some("r3".into()),
                ErrorCode::UnknownMethod,
                "no method \"x\"",
            ),
            r#"{"type":"error","id":"r3","code":"unknown_method","message":"no method \"x\""}"#,
        ),
        (
            ServerFrame::Direct {
                from: Sender {
                    client_id: "c1".into(),
                    user_id: None,
                },
                data: pj!({"sdp":"answer"}),
            },
            r#"{"type":"direct","from":{"client_id":"c1"},"data":{"sdp":"answer"}}"#,
        ),
    ]
}

#[test]
fn client_frames_are_pinned_and_round_trip() {
    let mut seen = std::collections::BTreeSet::new();
    for (frame, wire) in client_cases() {
        assert_eq!(codec::encode(&frame), wire, "encoding {}", frame.kind());
        let back = codec::decode_client(wire, &Limits::default());
        assert_eq!(back, vec![Ok(frame.clone())], "decoding {wire}");
        seen.insert(frame.kind());
    }
    let all: std::collections::BTreeSet<_> = ClientFrame::KINDS.into_iter().collect();
    assert_eq!(seen, all, "every client frame kind has a pinned case");
}

#[test]
fn server_frames_are_pinned_and_round_trip() {
    let mut seen = std::collections::BTreeSet::new();
    for (frame, wire) in server_cases() {
        assert_eq!(codec::encode(&frame), wire, "encoding {}", frame.kind());
        assert_eq!(
            codec::decode_server(wire),
            vec![Ok(frame.clone())],
            "decoding {wire}"
        );
        seen.insert(frame.kind());
    }
    let all: std::collections::BTreeSet<_> = ServerFrame::KINDS.into_iter().collect();
    assert_eq!(seen, all, "every server frame kind has a pinned case");
}

#[test]
fn batches_decode_in_order_both_ways() {
    let client: Vec<_> = client_cases().into_iter().map(|(f, _)| f).collect();
    let text = codec::encode_batch(&client);
    assert!(text.starts_with('['));
    let back: Vec<_> = codec::decode_client(&text, &Limits::default())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(back, client);

    let server: Vec<_> = server_cases().into_iter().map(|(f, _)| f).collect();
    let back: Vec<_> = codec::decode_server(&codec::encode_batch(&server))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(back, server);

    // a batch of one is sent as a plain object
    assert_eq!(
        codec::encode_batch(&[ClientFrame::Ping { id: None }]),
        r#"{"type":"ping"}"#
    );
}

fn err(text: &str) -> FrameError {
    let mut out = codec::decode_client(text, &Limits::default());
    assert_eq!(out.len(), 1, "{text}");
    out.pop().unwrap().expect_err(text)
}

#[test]
fn malformed_frames_get_the_right_code() {
    let cases = [
        ("not json", ErrorCode::BadFrame),
        ("", ErrorCode::BadFrame),
        ("42", ErrorCode::BadFrame),
        (r#""ping""#, ErrorCode::BadFrame),
        (r#"{"channel":"x"}"#, ErrorCode::BadFrame),
        (r#"{"type":7}"#, ErrorCode::BadFrame),
        (r#"{"type":"teleport"}"#, ErrorCode::UnknownType),
        (
            r#"{"type":"welcome","client_id":"c"}"#,
            ErrorCode::UnknownType,
        ),
        (r#"{"type":"subscribe"}"#, ErrorCode::BadFrame),
        (r#"{"type":"subscribe","channel":5}"#, ErrorCode::BadFrame),
        (r#"{"type":"publish","channel":"a"}"#, ErrorCode::BadFrame),
        (r#"{"type":"request","method":"time"}"#, ErrorCode::BadFrame),
        (
            r#"{"type":"subscribe","channel":""}"#,
            ErrorCode::InvalidChannel,
        ),
        (
            r#"{"type":"subscribe","channel":"a b"}"#,
            ErrorCode::InvalidChannel,
        ),
        (
            r#"{"type":"unsubscribe","channel":"é"}"#,
            ErrorCode::InvalidChannel,
        ),
        ("[1,", ErrorCode::BadFrame),
    ];
    for (text, code) in cases {
        let e = err(text);
        assert_eq!(e.code, code, "{text}: {e}");
        assert!(!e.message.is_empty());
    }
    let long = format!(r#"{{"type":"subscribe","channel":"{}"}}"#, "a".repeat(129));
    assert_eq!(err(&long).code, ErrorCode::InvalidChannel);
    let ok = format!(r#"{{"type":"subscribe","channel":"{}"}}"#, "a".repeat(128));
    assert!(codec::decode_client(&ok, &Limits::default())[0].is_ok());
}

#[test]
fn errors_carry_the_frame_id_when_there_is_one() {
    let e = err(r#"{"type":"publish","id":"m9","channel":"bad name","data":1}"#);
    assert_eq!(
        (e.id.as_ref().map(|i| i.as_str()), e.code),
        (Some("m9"), ErrorCode::InvalidChannel)
    );
    let e = err(r#"{"type":"request","id":"r9","params":{}}"#);
    assert_eq!(
        (e.id.as_ref().map(|i| i.as_str()), e.code),
        (Some("r9"), ErrorCode::BadFrame)
    );
    let e = err(r#"{"type":"nope","id":"x"}"#);
    assert_eq!(e.id.as_ref().map(|i| i.as_str()), Some("x"));
    assert_eq!(
        e.into_frame(),
        ServerFrame::error(
            Some("x".into()),
            ErrorCode::UnknownType,
            "unknown frame type \"nope\"; expected one of hello, ping, subscribe, unsubscribe, publish, request, direct"
        )
    );
}

#[test]
fn a_bad_frame_in_a_batch_spoils_only_itself() {
    let out = codec::decode_client(
        r#"[{"type":"ping","id":"1"},{"type":"bogus"},{"type":"ping","id":"2"}]"#,
        &Limits::default(),
    );
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0],
        Ok(ClientFrame::Ping {
            id: Some("1".into())
        })
    );
    assert_eq!(out[1].as_ref().unwrap_err().code, ErrorCode::UnknownType);
    assert_eq!(
        out[2],
        Ok(ClientFrame::Ping {
            id: Some("2".into())
        })
    );
}

#[test]
fn oversized_batches_are_refused_whole() {
    let limits = Limits {
        max_batch: 2,
        ..Limits::default()
    };
    let out = codec::decode_client(
        r#"[{"type":"ping"},{"type":"ping"},{"type":"ping"}]"#,
        &limits,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code, ErrorCode::BatchTooLarge);
    assert!(codec::decode_client("[]", &limits).is_empty());
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    assert_eq!(
        codec::decode_client(
            r#"{"type":"ping","id":"1","priority":"high"}"#,
            &Limits::default()
        ),
        vec![Ok(ClientFrame::Ping {
            id: Some("1".into())
        })]
    );
}

#[test]
fn ids_and_presence_info_over_their_limits_are_too_large() {
    let limits = Limits::default();
    let long = "x".repeat(limits.max_id_bytes as usize + 1);
    let fits = "x".repeat(limits.max_id_bytes as usize);
    let frames = [
        format!(r#"{{"type":"publish","id":"{long}","channel":"a","data":1}}"#),
        format!(r#"{{"type":"request","id":"{long}","method":"time"}}"#),
        format!(r#"{{"type":"ping","id":"{long}"}}"#),
        format!(r#"{{"type":"request","id":"r","method":"{long}"}}"#),
        format!(r#"{{"type":"direct","to":"{long}","data":1}}"#),
        format!(r#"{{"type":"hello","resume":"{long}"}}"#),
        format!(r#"{{"type":"hello","client":{{"name":"{long}","version":"1"}}}}"#),
        format!(r#"{{"type":"subscribe","channel":"a","since":{{"offset":1,"epoch":"{long}"}}}}"#),
    ];
    for text in &frames {
        let e = err(text);
        assert_eq!(e.code, ErrorCode::TooLarge, "{text}: {e}");
    }
    // The oversized id is not echoed back; a fitting one is.
    assert_eq!(err(&frames[0]).id, None);
    assert_eq!(err(&frames[3]).id.as_ref().map(|i| i.as_str()), Some("r"));
    for text in [
        format!(r#"{{"type":"publish","id":"{fits}","channel":"a","data":1}}"#),
        format!(r#"{{"type":"direct","to":"{fits}","data":1}}"#),
    ] {
        assert!(codec::decode_client(&text, &limits)[0].is_ok(), "{text}");
    }

    // Presence info is measured as JSON.
    let max = limits.max_presence_bytes as usize;
    let info = |n: usize| format!(r#"{{"n":"{}"}}"#, "a".repeat(n - 8));
    assert_eq!(info(max).len(), max);
    let ok = format!(
        r#"{{"type":"subscribe","channel":"a","presence":{}}}"#,
        info(max)
    );
    assert!(codec::decode_client(&ok, &limits)[0].is_ok());
    let big = format!(
        r#"{{"type":"subscribe","channel":"a","presence":{}}}"#,
        info(max + 1)
    );
    assert_eq!(err(&big).code, ErrorCode::TooLarge);
}

#[test]
fn limits_from_an_older_server_read_the_new_fields_as_defaults() {
    let old = r#"{"max_frame_bytes":65536,"max_batch":100,"max_subscriptions":100,"rate_per_sec":50,"rate_burst":100}"#;
    let limits: Limits = serde_json::from_str(old).unwrap();
    assert_eq!(limits, Limits::default());
}

#[test]
fn a_batch_is_decoded_one_frame_at_a_time() {
    let limits = Limits::default();
    let mut it = codec::decode_client_iter(
        r#"[{"type":"ping","id":"1"},{"type":"bogus"},{"type":"ping","id":"2"}]"#,
        &limits,
    );
    assert!(matches!(it.next(), Some(Ok(ClientFrame::Ping { .. }))));
    assert_eq!(it.next().unwrap().unwrap_err().code, ErrorCode::UnknownType);
    assert!(matches!(it.next(), Some(Ok(ClientFrame::Ping { .. }))));
    assert!(it.next().is_none());
}

#[test]
fn payloads_pass_through_byte_for_byte() {
    let text = r#"{"type":"publish","id":"1","channel":"a","data":{ "z": 1.50, "a": [ 1 ,2 ] }}"#;
    let frame = codec::decode_client(text, &Limits::default())
        .remove(0)
        .unwrap();
    let ClientFrame::Publish { data, .. } = &frame else {
        panic!("{frame:?}");
    };
    // Not parsed into a tree: key order, spacing and number spelling are kept.
    assert_eq!(data.get(), r#"{ "z": 1.50, "a": [ 1 ,2 ] }"#);
    assert!(codec::encode(&frame).contains(r#""data":{ "z": 1.50, "a": [ 1 ,2 ] }"#));
}

#[test]
fn null_is_a_value_for_payloads_and_absent_for_options() {
    let limits = Limits::default();
    let ok = |t: &str| codec::decode_client(t, &limits).remove(0).unwrap();
    match ok(r#"{"type":"publish","channel":"a","data":null,"ephemeral":null}"#) {
        ClientFrame::Publish {
            data, ephemeral, ..
        } => assert!(data.is_null() && !ephemeral),
        other => panic!("{other:?}"),
    }
    match ok(r#"{"type":"subscribe","channel":"a","presence":null}"#) {
        ClientFrame::Subscribe { presence, .. } => assert_eq!(presence, None),
        other => panic!("{other:?}"),
    }
    match ok(r#"{"type":"request","id":"r","method":"time","params":null}"#) {
        ClientFrame::Request { params, .. } => assert!(params.is_null()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err(r#"{"type":"direct","to":"c"}"#).code,
        ErrorCode::BadFrame
    );
    let server = codec::decode_server(r#"{"type":"response","id":"r","result":null}"#);
    assert!(matches!(&server[0], Ok(ServerFrame::Response { result, .. }) if result.is_null()));
}

/// `unrecovered` reads back every reason it writes, and a reason from a newer server as
/// `unknown` (its deserializer is written by hand).
#[test]
fn every_unrecovered_reason_reads_back() {
    for reason in [
        Unrecovered::Epoch,
        Unrecovered::Trimmed,
        Unrecovered::TooMany,
        Unrecovered::Unknown,
    ] {
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(
            serde_json::from_str::<Unrecovered>(&json).unwrap(),
            reason,
            "{json}"
        );
    }
    assert_eq!(
        serde_json::from_str::<Unrecovered>(r#""compacted""#).unwrap(),
        Unrecovered::Unknown
    );
}

/// The server-frame decoder (written for bundle size, `wire.rs`) reads the members a kind
/// uses as the derived one did: `null` is absent for plain fields and a value for payloads,
/// other members are skipped (docs/protocol.md: even ones another kind defines), and a
/// duplicate, a missing or a mistyped member, an unknown kind or a non-object is a
/// `bad_frame` that names the problem.
#[test]
fn the_server_frame_decoder_reads_members_as_the_derive_did() {
    let one = |text: &str| codec::decode_server(text).remove(0);
    assert_eq!(
        one(r#"{"extra":[1,{"a":null}],"type":"pong","id":null,"ts":null}"#),
        Ok(ServerFrame::Pong { id: None, ts: None })
    );
    // Members another kind defines are not read, so neither their type nor a duplicate
    // matters to this one.
    assert_eq!(
        one(r#"{"type":"pong","channel":5,"offset":1,"offset":2}"#),
        Ok(ServerFrame::Pong { id: None, ts: None })
    );
    assert_eq!(
        one(r#"{"type":"message","channel":"c","data":null,"ts":1,"ephemeral":null}"#),
        Ok(ServerFrame::Message {
            channel: "c".into(),
            from: None,
            data: Payload::null(),
            ts: 1,
            ephemeral: false,
            offset: None,
            epoch: None,
        })
    );
    for (text, says) in [
        (
            r#"{"type":"ack","id":"a","id":"b"}"#,
            "duplicate field `id`",
        ),
        (r#"{"type":"ack"}"#, "missing field `id`"),
        (
            r#"{"type":"message","channel":"c","ts":1}"#,
            "missing field `data`",
        ),
        (r#"{"type":"ack","id":"a","offset":"7"}"#, "`offset`"),
        (r#"{"type":"ack","id":"a","offset":-1}"#, "`offset`"),
        (r#"{"type":"nope"}"#, "unknown variant `nope`"),
        (r#"{"id":"a"}"#, "missing field `type`"),
        (r#"[1]"#, "a frame"),
        (r#"{"type":"ack","id":"a""#, "EOF"),
    ] {
        let e = one(text).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame, "{text}");
        assert!(e.message.contains(says), "{text}: {}", e.message);
    }
}

#[test]
fn no_error_echoes_an_oversized_id() {
    let long = "i".repeat(65);
    for text in [
        format!(r#"{{"type":"publish","id":"{long}","channel":"bad name","data":1}}"#),
        format!(r#"{{"type":"nope","id":"{long}"}}"#),
        format!(r#"{{"type":"request","id":"{long}"}}"#),
    ] {
        assert_eq!(err(&text).id, None, "{text}");
    }
}

/// The MessagePack encoding shares the pinned frames: each one's MessagePack form comes
/// back to the very same JSON, and decodes to the same frame.
#[cfg(feature = "msgpack")]
#[test]
fn every_pinned_frame_survives_messagepack() {
    use switchboard_protocol::msgpack;
    for (frame, wire) in client_cases() {
        let packed = msgpack::from_json(wire.as_bytes()).unwrap();
        let back = msgpack::to_json(&packed, 1 << 20).unwrap();
        assert_eq!(back, wire, "{}", frame.kind());
        assert_eq!(
            codec::decode_client(&back, &Limits::default()),
            vec![Ok(frame)]
        );
    }
    for (frame, wire) in server_cases() {
        let packed = msgpack::from_json(wire.as_bytes()).unwrap();
        assert_eq!(
            msgpack::to_json(&packed, 1 << 20).unwrap(),
            wire,
            "{}",
            frame.kind()
        );
    }
    // One pinned byte for byte: {"type":"ping","id":"7"}.
    assert_eq!(
        msgpack::from_json(br#"{"type":"ping","id":"7"}"#).unwrap(),
        b"\x82\xa4type\xa4ping\xa2id\xa17"
    );
}
