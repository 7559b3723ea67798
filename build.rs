//! Build script: compiles the C shim in `mod_passenger/` against Apache's
//! headers and runs bindgen over `ffi/wrapper.h`.
//!
//! Apache and APR headers are found through `apxs` (override with the `APXS`
//! environment variable); bindgen needs libclang. Both come from Debian's
//! `apache2-dev` and `libclang-dev`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/directives.rs"]
mod directives;

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=APXS");
    for dir in ["ffi", "mod_passenger"] {
        println!("cargo:rerun-if-changed={dir}");
    }

    let apache_includes = apache_include_dirs();
    directives::generate(&out_dir);
    compile_shim(&apache_includes, &out_dir);
    generate_bindings(&out_dir);
}

/// Asks `apxs` where httpd's and APR's headers live.
fn apache_include_dirs() -> Vec<PathBuf> {
    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_owned());
    let query = |var: &str| -> String {
        let output = Command::new(&apxs)
            .args(["-q", var])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{apxs}` ({e}): Apache's development files are needed to build \
                 mod_passenger. On Debian: apt-get install apache2-dev (or set APXS to the \
                 path of apxs)"
                )
            });
        if !output.status.success() {
            panic!(
                "`{apxs} -q {var}` failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let mut dirs = vec![PathBuf::from(query("INCLUDEDIR"))];
    let apr = query("APR_INCLUDEDIR");
    if !apr.is_empty() {
        dirs.push(PathBuf::from(apr));
    }
    for dir in &dirs {
        if !dir
            .join(if dir == &dirs[0] { "httpd.h" } else { "apr.h" })
            .exists()
        {
            panic!(
                "{} lacks the expected headers: install apache2-dev (Debian) or set APXS",
                dir.display()
            );
        }
    }
    dirs
}

/// Compiles every C file of the shim into a static library that rustc
/// bundles into `libmod_passenger.a`.
fn compile_shim(apache_includes: &[PathBuf], out_dir: &Path) {
    let mut build = cc::Build::new();
    let mut sources: Vec<PathBuf> = std::fs::read_dir("mod_passenger")
        .expect("mod_passenger/ exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();
    build
        .files(&sources)
        .include("ffi")
        .include("mod_passenger")
        .include(out_dir)
        .includes(apache_includes)
        .define("_GNU_SOURCE", None)
        .define(
            "MP_LIBEXEC_DIR",
            Some(format!("\"{}\"", libexec_dir()).as_str()),
        )
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .compile("mp_shim");
    println!("cargo:rerun-if-env-changed=MP_LIBEXEC_DIR");
    println!("cargo:rustc-env=MP_LIBEXEC_DIR={}", libexec_dir());
}

/// Runs bindgen over `ffi/wrapper.h`, keeping only our `mp_`/`MP_` types and
/// constants. The functions declared there are defined in Rust
/// (`src/ffi/exports.rs`), so no `extern` block is generated for them.
fn generate_bindings(out_dir: &Path) {
    bindgen::Builder::default()
        .header("ffi/wrapper.h")
        .clang_arg("-Iffi")
        .allowlist_type("(mp|MP)_.*")
        .allowlist_var("(mp|MP)_.*")
        .rustified_enum("mp_status")
        .layout_tests(true)
        .generate_comments(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen could not read ffi/wrapper.h (is libclang-dev installed?)")
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("OUT_DIR is writable");
}

/// Where `make install` puts the agent: the last place the module looks.
fn libexec_dir() -> String {
    env::var("MP_LIBEXEC_DIR").unwrap_or_else(|_| "/usr/lib/mod_passenger".to_owned())
}
