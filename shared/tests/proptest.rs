//! Property tests: any frame survives encode → decode, alone or in a batch, and the decoder
//! never panics on arbitrary text.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_protocol::{ClientFrame, Limits, StreamPosition, codec};

fn channel() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@/=-]{1,128}"
}

fn data() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        (".{0,10}", any::<u32>()).prop_map(|(k, v)| json!({ k: v, "list": [v, 1, "x"] })),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        proptest::option::of(".{0,12}").prop_map(|id| ClientFrame::Ping {
            id: id.map(Into::into)
        }),
        (
            channel(),
            proptest::option::of((any::<u64>(), "[a-z0-9]{1,8}")),
            proptest::option::of(any::<u32>()),
            proptest::option::of(data())
        )
            .prop_map(|(c, since, rewind, presence)| ClientFrame::Subscribe {
                id: None,
                channel: c.into(),
                since: since.map(|(offset, epoch)| StreamPosition { offset, epoch }),
                rewind,
                // a presence of JSON null is the same as no presence on the wire
                presence: presence.filter(|p| !p.is_null()).map(Into::into),
            }),
        channel().prop_map(|c| ClientFrame::Unsubscribe {
            id: None,
            channel: c.into()
        }),
        (
            proptest::option::of(".{1,12}"),
            channel(),
            data(),
            any::<bool>()
        )
            .prop_map(|(id, c, data, ephemeral)| ClientFrame::Publish {
                id: id.map(Into::into),
                channel: c.into(),
                data: data.into(),
                ephemeral,
                skip_self: false,
            }),
        (".{1,12}", "[a-z_]{1,16}", data()).prop_map(|(id, method, params)| ClientFrame::Request {
            id: id.into(),
            method,
            params: params.into(),
        }),
        (".{1,12}", data()).prop_map(|(to, data)| ClientFrame::Direct {
            id: None,
            to: to.into(),
            data: data.into()
        }),
    ]
}

proptest! {
    #[test]
    fn round_trip(frames in proptest::collection::vec(client_frame(), 1..8)) {
        for f in &frames {
            let back = codec::decode_client(&codec::encode(f), &Limits::default());
            prop_assert_eq!(back, vec![Ok(f.clone())]);
        }
        let back: Vec<_> = codec::decode_client(&codec::encode_batch(&frames), &Limits::default())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(back, frames);
    }

    #[test]
    fn decoder_never_panics(text in ".{0,200}") {
        let _ = codec::decode_client(&text, &Limits::default());
        let _ = codec::decode_server(&text);
    }

    #[test]
    fn decoder_never_panics_on_json_shaped_text(
        kind in prop_oneof![Just("ping".to_owned()), Just("publish".to_owned()), Just("subscribe".to_owned()), ".{0,8}"],
        body in "[{}\\[\\]\",:0-9a-z ]{0,60}",
    ) {
        let text = format!(r#"{{"type":"{kind}",{body}"#);
        let _ = codec::decode_client(&text, &Limits::default());
        let _ = codec::decode_client(&format!("[{text}]"), &Limits::default());
    }
}
