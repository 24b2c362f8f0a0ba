//! The one `bindgen!` of warden: host bindings for `warden:policy@0.1.0`.

wasmtime::component::bindgen!({
    world: "policy",
    path: "../wit",
    imports: {
        "warden:policy/sql.query": async | trappable,
        "warden:policy/s3.head": async | trappable,
        "warden:policy/s3.list-objects": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use warden::policy::types;
