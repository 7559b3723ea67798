//! Build step: everything derived from the directive table
//! (`src/config/table.rs`), through the generators of
//! `src/config/codegen.rs`.
//!
//! Writes `mp_directives.inc` (the C command table, included by
//! `mod_passenger/mp_config.c`) and `mp_config_fields.rs` (included by
//! `src/ffi/config.rs`) to `OUT_DIR`. Checks that the committed
//! `ffi/mp_config.h` and `docs/directives.md` match the table: a stale
//! header stops the build (the C and bindgen would disagree with the
//! table), stale docs give a warning. With `MP_REGENERATE=1` it rewrites
//! both instead.

#[allow(dead_code)]
#[path = "../src/config/table.rs"]
mod table;

#[allow(dead_code)]
#[path = "../src/config/codegen.rs"]
mod codegen;

use std::path::Path;

/// Generates the files; see the module docs.
pub fn generate(out_dir: &Path) {
    for input in [
        "src/config/table.rs",
        "src/config/codegen.rs",
        "build/directives.rs",
    ] {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-env-changed=MP_REGENERATE");
    write(&out_dir.join("mp_directives.inc"), &codegen::c_directives());
    write(
        &out_dir.join("mp_config_fields.rs"),
        &codegen::rust_fields(),
    );

    let regenerate = std::env::var_os("MP_REGENERATE").is_some_and(|v| v != "0" && !v.is_empty());
    for (path, text, fatal) in [
        ("ffi/mp_config.h", codegen::c_header(), true),
        ("docs/directives.md", codegen::docs(), false),
    ] {
        if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if regenerate {
            write(Path::new(path), &text);
            println!("cargo:warning=regenerated {path} from src/config/table.rs");
        } else if fatal {
            panic!(
                "{path} does not match src/config/table.rs: run `MP_REGENERATE=1 cargo build` to \
                 regenerate it (and docs/directives.md)"
            );
        } else {
            println!(
                "cargo:warning={path} is stale: run `MP_REGENERATE=1 cargo build` to regenerate it"
            );
        }
    }
}

fn write(path: &Path, text: &str) {
    // Only write on change, so files that did not change keep their mtime.
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
