//! The batch validator a publish goes through, the decoders of stored batches (records,
//! and the tenant index's keyed records) and the tenant filter: no input may panic them,
//! and whatever validates must decode completely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_protocol::batch;
use tidelog_protocol::filter::filter_batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = batch::validate(data) {
        assert!(view.records().all(|r| r.is_ok()), "a validated batch decodes");
        let _ = filter_batch(&view, b"acme");
    }
    if let Ok(view) = batch::view_stored(data) {
        let _ = view.records().count();
        let _ = view.keyed_records().count(); // the tenant index's decoder
        let _ = filter_batch(&view, b"t");
    }
});
