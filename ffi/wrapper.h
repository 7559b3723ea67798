/* The bindgen entry point: everything Rust sees of the C ABI. */
#include "passenger_ffi.h"
