//! One snapshot object read as it streams by, dispatching on `kind` the moment it is
//! read: Deployments go straight into their projection, Nodes and GatewayReports into
//! their API types, and everything else is skipped without being built. `kind` comes
//! before `metadata` and `spec` in what kubectl prints; fields that come before `kind` are
//! held as JSON values until it is known.

use std::fmt;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, de::Error as _};
use serde_json::Value;

use crate::model::{GatewayReport, LiveDeployment, LiveMeta, LiveSpec};

/// One object of a snapshot, as far as planning cares.
#[derive(Debug)]
pub(crate) enum Parsed {
    Node(Box<Node>),
    Report(GatewayReport),
    Deployment(LiveDeployment),
    /// A kind planning does not read.
    Other {
        kind: String,
        name: String,
    },
}

/// One YAML document or JSON value of a snapshot.
#[allow(clippy::large_enum_variant)] // nearly every document is an Item: boxing would allocate once more per item
pub(crate) enum Doc {
    Empty,
    Item(Parsed),
    /// A `kind: List` (or `...List`) with `items`.
    List(Vec<Parsed>),
}

/// `List`, `NodeList`, `DeploymentList`...: what kubectl wraps several objects in.
pub(crate) fn is_list_kind(kind: &str) -> bool {
    kind.ends_with("List")
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Doc, D::Error> {
        de.deserialize_any(DocVisitor { list: true })
    }
}

/// A List item: a single object, never a nested List.
pub(crate) struct Item(pub Parsed);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Item, D::Error> {
        Ok(Item(
            de.deserialize_any(DocVisitor { list: false })?.into_item(),
        ))
    }
}

impl Doc {
    fn into_item(self) -> Parsed {
        match self {
            Doc::Item(p) => p,
            Doc::Empty | Doc::List(_) => Parsed::Other {
                kind: String::new(),
                name: String::new(),
            },
        }
    }
}

struct Items(Vec<Parsed>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Items, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Item(p)) = seq.next_element()? {
                    out.push(p);
                }
                Ok(Items(out))
            }
        }
        de.deserialize_seq(V)
    }
}

/// The top-level fields the reader tells apart, without allocating their names.
enum Key {
    Kind,
    ApiVersion,
    Metadata,
    Spec,
    Status,
    Items,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "kind" => Key::Kind,
                    "apiVersion" => Key::ApiVersion,
                    "metadata" => Key::Metadata,
                    "spec" => Key::Spec,
                    "status" => Key::Status,
                    "items" => Key::Items,
                    _ => Key::Other,
                })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key::Other)
            }
        }
        de.deserialize_identifier(V)
    }
}

/// The parts of an object read so far.
#[derive(Default)]
struct Parts {
    meta: Option<ObjectMeta>,
    live_meta: Option<LiveMeta>,
    live_spec: Option<LiveSpec>,
    node_spec: Option<k8s_openapi::api::core::v1::NodeSpec>,
    node_status: Option<k8s_openapi::api::core::v1::NodeStatus>,
    report_spec: Option<crate::model::GatewayReportSpec>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct NameOnly {
    name: Option<String>,
}

impl Parts {
    /// Reads the value of `key` of an object of `kind` from `de`.
    fn read<'de, D: Deserializer<'de>>(
        &mut self,
        kind: &str,
        key: &Key,
        de: D,
    ) -> Result<(), D::Error> {
        match (kind, key) {
            ("Deployment", Key::Metadata) => self.live_meta = Some(LiveMeta::deserialize(de)?),
            ("Deployment", Key::Spec) => self.live_spec = Some(LiveSpec::deserialize(de)?),
            ("Node" | "GatewayReport", Key::Metadata) => {
                self.meta = Some(ObjectMeta::deserialize(de)?)
            }
            ("Node", Key::Spec) => self.node_spec = Some(Deserialize::deserialize(de)?),
            ("Node", Key::Status) => self.node_status = Some(Deserialize::deserialize(de)?),
            ("GatewayReport", Key::Spec) => self.report_spec = Some(Deserialize::deserialize(de)?),
            (_, Key::Metadata) => self.name = NameOnly::deserialize(de)?.name,
            _ => {
                IgnoredAny::deserialize(de)?;
            }
        }
        Ok(())
    }

    fn finish<E: de::Error>(self, kind: String) -> Result<Parsed, E> {
        Ok(match kind.as_str() {
            "Deployment" => Parsed::Deployment(LiveDeployment::from_parts(
                self.live_meta.unwrap_or_default(),
                self.live_spec.unwrap_or_default(),
            )),
            "Node" => Parsed::Node(Box::new(Node {
                metadata: self.meta.unwrap_or_default(),
                spec: self.node_spec,
                status: self.node_status,
            })),
            "GatewayReport" => Parsed::Report(GatewayReport {
                metadata: self.meta.unwrap_or_default(),
                spec: self.report_spec.ok_or_else(|| E::missing_field("spec"))?,
            }),
            _ => Parsed::Other {
                name: self.name.unwrap_or_default(),
                kind,
            },
        })
    }
}

struct PartSeed<'a> {
    parts: &'a mut Parts,
    kind: &'a str,
    key: &'a Key,
}

impl<'de> DeserializeSeed<'de> for PartSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.parts.read(self.kind, self.key, de)
    }
}

struct DocVisitor {
    /// Whether a List may appear here (a document), or only an object (a List item).
    list: bool,
}

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Empty)
    }

    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Empty)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut kind: Option<String> = None;
        let mut early: Vec<(Key, Value)> = Vec::new();
        let mut items: Option<Vec<Parsed>> = None;
        let mut parts = Parts::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Kind => kind = Some(map.next_value()?),
                Key::ApiVersion => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Items if self.list && kind.as_deref().is_none_or(is_list_kind) => {
                    items = Some(map.next_value::<Items>()?.0)
                }
                key => match kind.as_deref() {
                    None if matches!(key, Key::Other) => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    None => early.push((key, map.next_value::<Value>()?)),
                    Some(k) => map.next_value_seed(PartSeed {
                        parts: &mut parts,
                        kind: k,
                        key: &key,
                    })?,
                },
            }
        }
        let kind = kind.unwrap_or_default();
        if let Some(items) = items {
            return if is_list_kind(&kind) {
                Ok(Doc::List(items))
            } else {
                Err(A::Error::custom("`items` outside a List"))
            };
        }
        for (key, value) in early {
            parts.read(&kind, &key, value).map_err(A::Error::custom)?;
        }
        Ok(Doc::Item(parts.finish(kind)?))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Doc::Item(Parsed::Other {
            kind: String::new(),
            name: String::new(),
        }))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Doc, E> {
        Ok(Doc::Item(Parsed::Other {
            kind: String::new(),
            name: String::new(),
        }))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Doc, E> {
        self.visit_str("")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Doc, E> {
        self.visit_str("")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Doc, E> {
        self.visit_str("")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Doc, E> {
        self.visit_str("")
    }
}
