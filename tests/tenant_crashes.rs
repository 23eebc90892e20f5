//! Tenant commands cut short, against a real SoftHSM2 token: the states a crash between
//! their steps leaves are made here with the library (one step done, the next not), and the
//! CLI and a mount must serve them, then finish them. One test per process: the library's
//! PKCS#11 context reads the token's configuration from this process's environment.

mod common;

use std::fs;
use std::path::Path;

use common::kms::SoftHsm;
use common::mount::{ok, status, tenant, MountFixture};
use envelopefs::fs::{TenantEntry, Volume};
use envelopefs::secret::PassSource;

#[test]
fn a_root_rotation_or_a_shred_of_a_tenant_cut_short_is_served_and_finished() {
    let hsm = SoftHsm::new();
    for (k, v) in hsm.env() {
        std::env::set_var(k, v);
    }
    let secrets = PassSource { pin_file: Some(hsm.pin_file()), ..PassSource::default() };
    let mut m = MountFixture::new_with(&["--kms", &hsm.uri("vol-root"), "--create-key"], hsm.env());
    m.unmount();
    for dir in ["a", "b"] {
        ok(&m.tenant_add(dir, &hsm.uri(dir)));
    }
    m.mount();
    fs::write(m.p("a/file"), b"tenant a").unwrap();
    fs::write(m.p("b/file"), b"tenant b").unwrap();
    m.unmount();

    // `rotate --root --tenant a` cut short after the tenant's header switched to the new
    // root, before the list named it (only as pending).
    let a2 = hsm.uri("a2");
    {
        let outer = Volume::open(&m.cipher, &secrets).unwrap();
        let entry = envelopefs::tenant::named(&outer, Path::new("a")).unwrap();
        let list: Vec<TenantEntry> = outer
            .tenants()
            .unwrap()
            .into_iter()
            .map(|t| if t.id == entry.id { TenantEntry { pending_uri: a2.clone(), ..t } } else { t })
            .collect();
        outer.put_tenants(&list).unwrap();
        let dir = outer.tenant_dir(&entry.id);
        let scratch = envelopefs::control::scratch_path(&entry.id);
        Volume::rotate_root_kms(&dir, &secrets, Some(&a2), true, &scratch, false).unwrap();
    }
    m.mount();
    let v = status(&m);
    assert_eq!(tenant(&v, "/a")["state"], "open", "the header names the pending root: served: {v:#}");
    assert_eq!(fs::read(m.p("a/file")).unwrap(), b"tenant a");
    m.unmount();
    let o = m.run(&["rotate".as_ref(), m.cipher.as_os_str(), "--root".as_ref(), "--tenant".as_ref(), "a".as_ref()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("object=a2"), "finished, not rotated again: {o:?}");
    m.mount();
    assert_eq!(tenant(&status(&m), "/a")["root"], a2.as_str());
    m.unmount();

    // `shred --tenant b` cut short after its keys were destroyed and its root directory
    // removed, before the list stopped naming it: routed nowhere, and fsck --repair unlists it.
    {
        let outer = Volume::open(&m.cipher, &secrets).unwrap();
        let entry = envelopefs::tenant::named(&outer, Path::new("b")).unwrap();
        let dir = outer.tenant_dir(&entry.id);
        Volume::shred_volume(&dir, &envelopefs::control::scratch_path(&entry.id), None, false, None).unwrap();
        outer.rmdir(Path::new("b")).unwrap();
    }
    m.mount();
    assert!(!m.p("b").exists());
    assert_eq!(fs::read(m.p("a/file")).unwrap(), b"tenant a");
    m.unmount();
    let o = m.run(&["fsck".as_ref(), m.cipher.as_os_str(), "--repair".as_ref()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("tenant /b") && said.contains("unlisted"), "{said}");
    m.mount();
    assert_eq!(status(&m)["tenants"].as_array().unwrap().len(), 1);
    m.unmount();

    // `tenant add c` cut short after the list named it, before its root directory was made:
    // its place takes no directory (it would be a plain one), `tenant add` there says what
    // to do, and `shred --tenant` of the missing root clears it.
    {
        let outer = Volume::open(&m.cipher, &secrets).unwrap();
        let mut list = outer.tenants().unwrap();
        list.push(TenantEntry {
            id: [0x5c; 16],
            dir_id: [0x5d; 16],
            kms_uri: hsm.uri("c"),
            label: "/c".into(),
            pending_uri: String::new(),
            parent_id: outer.dir_id_of(Path::new("")).unwrap(),
            name: b"c".to_vec(),
        });
        outer.put_tenants(&list).unwrap();
    }
    m.mount();
    let e = fs::create_dir(m.p("c")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "EIO where a missing root belongs: {e}");
    m.unmount();
    let o = m.tenant_add("c", &hsm.uri("c"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tenant /c` removes it"), "{o:?}");
    ok(&m.run(&["shred".as_ref(), m.cipher.as_os_str(), "--tenant".as_ref(), "c".as_ref(), "--yes".as_ref()]));
    ok(&m.tenant_add("c", &hsm.uri("c")));
    m.mount();
    fs::write(m.p("c/file"), b"tenant c").unwrap();
    assert_eq!(tenant(&status(&m), "/c")["state"], "open");
}
