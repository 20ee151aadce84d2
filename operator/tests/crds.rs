//! `crds/` is generated from the Rust types; this fails when they drift.
//! Regenerate with `make crds`.

#[test]
fn committed_crds_match_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/dbps.io.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/dbps.io.yaml exists");
    let generated = dbps_operator::api::crds_yaml();
    assert!(
        committed == generated,
        "crds/dbps.io.yaml differs from the Rust types: run `make crds` and commit the result"
    );
}

#[test]
fn every_crd_is_in_the_dbps_category_with_short_names() {
    for crd in dbps_operator::api::crds() {
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["dbps".to_string()][..]),
            "{}",
            names.kind
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.contains(&"Age"), "{}: {columns:?}", names.kind);
    }
}
