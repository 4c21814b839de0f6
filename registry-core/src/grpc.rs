//! [`GrpcServices`]: turns gRPC service descriptions into a node's `methods`
//! set and `proto_count` — the Rust form of the Go `NewRegisterService`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Error, Result, ServiceNode};

/// Collects the gRPC services an instance serves.
///
/// ```
/// use registry_core::GrpcServices;
/// let node = GrpcServices::new()
///     .service("user.UserService", ["GetProfile", "Login"])
///     .expect("valid names")
///     .into_node();
/// assert!(node.serves("/user.UserService/Login"));
/// assert_eq!(node.proto_count, 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct GrpcServices {
    services: BTreeMap<String, BTreeSet<String>>,
}

impl GrpcServices {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service by its full name (`package.Service`, the tonic
    /// `NamedService::NAME`) and its method names.
    pub fn service<I, M>(mut self, full_name: &str, methods: I) -> Result<Self>
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        check_part("service name", full_name, true)?;
        let entry = self.services.entry(full_name.to_owned()).or_default();
        for m in methods {
            let m = m.as_ref();
            check_part("method name", m, false)?;
            entry.insert(m.to_owned());
        }
        Ok(self)
    }

    /// Adds a tonic server by its [`tonic::server::NamedService`] name:
    /// `GrpcServices::new().named::<GreeterServer<MyGreeter>>(["SayHello"])`
    /// (one generic argument; the method names are inferred).
    #[cfg(feature = "tonic")]
    pub fn named<S: tonic::server::NamedService>(
        self,
        methods: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self> {
        self.service(S::NAME, methods)
    }

    /// Adds every service of a protobuf `FileDescriptorSet` (as produced by
    /// `protoc --descriptor_set_out` or `tonic-build`'s `file_descriptor_set_path`).
    pub fn descriptor_set(mut self, set: &prost_types::FileDescriptorSet) -> Result<Self> {
        for file in &set.file {
            let package = file.package();
            for svc in &file.service {
                let full = if package.is_empty() { svc.name().to_owned() } else { format!("{package}.{}", svc.name()) };
                self = self.service(&full, svc.method.iter().map(|m| m.name()))?;
            }
        }
        Ok(self)
    }

    /// Decodes an encoded `FileDescriptorSet` and adds its services.
    pub fn descriptor_set_bytes(self, bytes: &[u8]) -> Result<Self> {
        let set: prost_types::FileDescriptorSet = prost::Message::decode(bytes)
            .map_err(|e| Error::invalid("descriptor_set", format!("not a FileDescriptorSet: {e}")))?;
        self.descriptor_set(&set)
    }

    /// Full method paths, `/package.Service/Method`.
    pub fn methods(&self) -> impl Iterator<Item = String> + '_ {
        self.services.iter().flat_map(|(svc, ms)| ms.iter().map(move |m| format!("/{svc}/{m}")))
    }

    /// Number of services.
    pub fn proto_count(&self) -> i64 {
        i64::try_from(self.services.len()).unwrap_or(i64::MAX)
    }

    /// Writes `methods` and `proto_count` into `node`.
    pub fn apply_to(&self, node: &mut ServiceNode) {
        node.methods = self.methods().map(|m| (m, true)).collect();
        node.proto_count = self.proto_count();
    }

    /// A new node with just `methods` and `proto_count` set; the registrar
    /// fills the rest on install.
    pub fn into_node(self) -> ServiceNode {
        let mut node = ServiceNode::default();
        self.apply_to(&mut node);
        node
    }
}

fn check_part(what: &'static str, value: &str, dotted: bool) -> Result<()> {
    let ok = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || (dotted && c == '.'))
        && !value.starts_with('.')
        && !value.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("methods", format!("{what} `{value}` is not a valid protobuf identifier")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto};

    fn method(name: &str) -> MethodDescriptorProto {
        MethodDescriptorProto { name: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn services_become_full_method_paths() {
        let g = GrpcServices::new()
            .service("user.UserService", ["Login", "GetProfile"])
            .expect("valid")
            .service("health.Health", ["Check"])
            .expect("valid");
        let methods: Vec<String> = g.methods().collect();
        assert_eq!(methods, ["/health.Health/Check", "/user.UserService/GetProfile", "/user.UserService/Login"]);
        assert_eq!(g.proto_count(), 2);
    }

    #[test]
    fn descriptor_set_is_read_with_packages() {
        let set = FileDescriptorSet {
            file: vec![
                FileDescriptorProto {
                    package: Some("shop.v1".into()),
                    service: vec![ServiceDescriptorProto {
                        name: Some("Cart".into()),
                        method: vec![method("Add"), method("Remove")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                FileDescriptorProto {
                    service: vec![ServiceDescriptorProto {
                        name: Some("Bare".into()),
                        method: vec![method("Ping")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let bytes = prost::Message::encode_to_vec(&set);
        let node = GrpcServices::new().descriptor_set_bytes(&bytes).expect("decodes").into_node();
        assert!(node.serves("/shop.v1.Cart/Add"));
        assert!(node.serves("/shop.v1.Cart/Remove"));
        assert!(node.serves("/Bare/Ping"));
        assert_eq!(node.proto_count, 2);
    }

    #[test]
    fn garbage_descriptor_bytes_are_a_typed_error() {
        let err = GrpcServices::new().descriptor_set_bytes(&[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(matches!(err, Error::InvalidConfig { field: "descriptor_set", .. }));
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn named_takes_one_generic_argument() {
        struct Greeter;
        impl tonic::server::NamedService for Greeter {
            const NAME: &'static str = "helloworld.Greeter";
        }
        let node = GrpcServices::new().named::<Greeter>(["SayHello"]).expect("valid").into_node();
        assert!(node.serves("/helloworld.Greeter/SayHello"));
    }

    #[test]
    fn invalid_names_are_rejected() {
        assert!(GrpcServices::new().service("", ["A"]).is_err());
        assert!(GrpcServices::new().service("a/b", ["A"]).is_err());
        assert!(GrpcServices::new().service("pkg.S", ["A/B"]).is_err());
        assert!(GrpcServices::new().service("pkg.S", ["A.B"]).is_err());
    }
}
