//! Issue 13: the security labs 01 to 08, driven as a student would drive them (`skv lab
//! start`, shell steps in the lab's directory, `skv lab check --json`, `skv lab stop`). For
//! every lab: an empty attempt fails with an explanation, a near-miss fails with one, and the
//! worked solution (`skv lab solution`, executed) passes. Labs 09 to 16 are in labs_more.rs.

use skv_tests::lab::LabRun;

/// Lab 01. Near-miss: a capture of the TLS node saved as the plaintext capture.
#[test]
fn lab01_sniff() -> anyhow::Result<()> {
    let lab = LabRun::start("1")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(!empty.solved());
    assert!(
        empty
            .missing("break it")
            .contains("there is no capture-plain.bin"),
        "{:?}",
        empty.json
    );
    assert!(
        empty
            .missing("fix it")
            .contains("insecure_plaintext = true"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "sed -i '/^insecure_plaintext/d' nodes/db.toml\n\
         skv lab restart 1 --dir .\n\
         skv lab sniff --listen $WIRE_ADDR --to $DB_ADDR --out capture-plain.bin --for 2",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it").contains("holds TLS traffic"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("fix it")
            .contains("there is no capture-tls.bin"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.part_solved("break it") && done.part_solved("fix it"));
    assert!(done.notes("break it").contains("crossed the wire in clear"));
    Ok(())
}
