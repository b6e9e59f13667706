//! The backup directory's disk: free space is checked before a backup starts. The real binary
//! against a real PostgreSQL, on a small tmpfs.

use ef_backup_e2e::{drop_db, ef, files, psql, tempdir, Mount};

/// Pins issue 12 "before a backup, free space is checked against the last backup's size": with
/// less room than the newest backup took (plus a margin), the backup does not start and the
/// error says how much is needed, how much is free and what fills the directory. Before, it
/// started and ran into ENOSPC, or (as here, a smaller new dump) succeeded on a disk that the
/// next normal-sized backup would fill.
#[test]
fn a_backup_without_room_for_the_last_backups_size_does_not_start() {
    let db = "ef_disk_room";
    drop_db(db);
    psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    psql(db, "CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i");
    let dir = tempdir();
    let backups = dir.path().join("small");
    let _mount = Mount::tmpfs(&backups, "4m");
    let run = ef(db, &backups, &[], &["backup", "--now", "1700000000"]);
    assert!(run.ok(), "{}", run.all());
    let last = files(&backups).pop().unwrap();
    // The last backup took 3 MiB: about 3.3 MiB are needed, less than 1 MiB is free.
    std::fs::write(backups.join(&last), vec![1u8; 3 * 1048576]).unwrap();

    let run = ef(db, &backups, &[], &["backup"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    for part in
        ["not enough free space in", "the last one was 3.00 MB", "about 3.30 MB is needed", &format!("largest: {last} (3.00 MB)"), "EF__BACKUP_DIR"]
    {
        assert!(run.stderr.contains(part), "{part:?} not in {}", run.all());
    }
    assert_eq!(files(&backups), [last], "nothing started, nothing deleted");
    drop_db(db);
}
