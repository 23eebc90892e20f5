//! Our wrappers against published vectors (RFC 8452 AES-256-GCM-SIV, IEEE 1619 XTS-AES-256)
//! and against our own format vectors in `tests/vectors/*.txt` (also in `docs/FORMAT.md`).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envelopefs::crypto::{
    BlockAad, DataCipher, Key256, Key512, KeyWrapper, NameCipher, NamePurpose, SecretKey, XtsAes256,
};
use sha2::{Digest, Sha256};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

/// RFC 8452 appendix C.2 (AEAD_AES_256_GCM_SIV): key, nonce, aad, plaintext, result.
const RFC8452: &[(&str, &str, &str, &str, &str)] = &[
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "0100000000000000",
        "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "010000000000000000000000",
        "9aab2aeb3faa0a34aea8e2b18ca50da9ae6559e48fd10f6e5c9ca17e",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "01000000000000000000000000000000",
        "85a01b63025ba19b7fd3ddfc033b3e76c9eac6fa700942702e90862383c6c366",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "0100000000000000000000000000000002000000000000000000000000000000",
        "4a6a9db4c8c6549201b9edb53006cba821ec9cf850948a7c86c68ac7539d027fe819e63abcd020b006a976397632eb5d",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "01",
        "0200000000000000",
        "1de22967237a813291213f267e3b452f02d01ae33e4ec854",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "01",
        "0200000000000000000000000000000003000000000000000000000000000000",
        "07dad364bfc2b9da89116d7bef6daaaf6f255510aa654f920ac81b94e8bad365aea1bad12702e1965604374aab96dbbc",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "010000000000000000000000",
        "02000000",
        "22b3f4cd1835e517741dfddccfa07fa4661b74cf",
    ),
    (
        "bae8e37fc83441b16034566b7a806c46bb91c3c5aedb64a6c590bc84d1a5e269",
        "e4b47801afc0577e34699b9e",
        "4fbdc66f14",
        "671fdd",
        "0eaccb93da9bb81333aee0c785b240d319719d",
    ),
    (
        "a44102952ef94b02b805249bac80e6f61455bfac8308a2d40d8c845117808235",
        "5c9e940fea2f582950a70d5a",
        "0da55210cc1c1b0abde3b2f204d1e9f8b06bc47f",
        "1db2316fd568378da107b52b",
        "8dbeb9f7255bf5769dd56692404099c2587f64979f21826706d497d5",
    ),
];

fn check_gcm_siv<const N: usize>(key: &[u8], nonce: &[u8], aad: &[u8], pt: &[u8], result: &[u8]) {
    let wrapper = KeyWrapper::new(&Key256::from_bytes(key.try_into().unwrap()));
    let plain = SecretKey::<N>::from_bytes(pt.try_into().unwrap());
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let out = wrapper.wrap_with_nonce(&plain, aad, &nonce);
    assert_eq!(&out[..12], &nonce);
    assert_eq!(hex::encode(&out[12..]), hex::encode(result));
    let back: SecretKey<N> = wrapper.unwrap(&out, aad).unwrap();
    assert_eq!(back.expose(), plain.expose());
    // Negative: any flipped bit of the result is refused.
    for i in 0..out.len() {
        let mut bad = out.clone();
        bad[i] ^= 0x01;
        assert!(wrapper.unwrap::<N>(&bad, aad).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn rfc8452_aes_256_gcm_siv() {
    for (k, n, a, p, r) in RFC8452 {
        let (k, n, a, p, r) = (h(k), h(n), h(a), h(p), h(r));
        match p.len() {
            3 => check_gcm_siv::<3>(&k, &n, &a, &p, &r),
            4 => check_gcm_siv::<4>(&k, &n, &a, &p, &r),
            8 => check_gcm_siv::<8>(&k, &n, &a, &p, &r),
            12 => check_gcm_siv::<12>(&k, &n, &a, &p, &r),
            16 => check_gcm_siv::<16>(&k, &n, &a, &p, &r),
            32 => check_gcm_siv::<32>(&k, &n, &a, &p, &r),
            other => panic!("no instantiation for {other}"),
        }
    }
}

/// IEEE 1619-2007 XTS-AES-256 vector 10 (data unit sequence number 0xff); the first 256
/// bytes of the 512-byte data unit, which XTS encrypts independently of the rest.
#[test]
fn ieee1619_xts_aes_256_vector_10() {
    let key = h("2718281828459045235360287471352662497757247093699959574966967627
                 3141592653589793238462643383279502884197169399375105820974944592");
    let expect = h("1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44
                    680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0
                    c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7d
                    e8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f
                    93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6
                    dc3966380ad8fecb17b6ba02469a020a");
    let xts = XtsAes256::new(&Key512::from_bytes(key.as_slice().try_into().unwrap()));
    let mut unit: Vec<u8> = (0..=255u8).collect();
    xts.encrypt_unit(&mut unit, 0xff);
    assert_eq!(hex::encode(&unit), hex::encode(&expect));
    xts.decrypt_unit(&mut unit, 0xff);
    assert_eq!(unit, (0..=255u8).collect::<Vec<_>>());
}

/// The block ciphers are the proven primitives above, composed as FORMAT.md says.
#[test]
fn block_ciphers_compose_the_proven_primitives() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let nonce = [7u8; 12];
    let aad = BlockAad { volume_id: [1; 16], file_id: [2; 16], block_index: 9 };
    let plain: [u8; 4096] = std::array::from_fn(|i| (i % 251) as u8);
    let gcm = DataCipher::gcm_siv(&Key256::from_bytes(&key));
    let mut slot = vec![0u8; gcm.slot_size()];
    gcm.seal(&aad, &nonce, &plain, &mut slot);
    let reference = KeyWrapper::new(&Key256::from_bytes(&key)).wrap_with_nonce(
        &SecretKey::<4096>::from_bytes(&plain),
        &aad.encode(),
        &nonce,
    );
    assert_eq!(slot, reference, "GCM-SIV slot = nonce || RFC 8452 output with the block AAD");

    let key64: [u8; 64] = std::array::from_fn(|i| i as u8);
    let xts = DataCipher::xts(&Key512::from_bytes(&key64));
    let mut slot = vec![0u8; 4096];
    xts.seal(&aad, &nonce, &plain, &mut slot);
    let mut reference = plain.to_vec();
    XtsAes256::new(&Key512::from_bytes(&key64)).encrypt_unit(&mut reference, 9);
    assert_eq!(slot, reference, "XTS slot = IEEE 1619 with the block index as data unit number");
}

/// One `key: value` vector file.
fn parse(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn arr<const N: usize>(v: &BTreeMap<String, String>, k: &str) -> [u8; N] {
    h(&v[k]).try_into().unwrap_or_else(|_| panic!("{k} must be {N} bytes"))
}

fn block_plaintext() -> [u8; 4096] {
    std::array::from_fn(|i| (i % 251) as u8)
}

/// Evaluates one vector; returns whether the computation succeeded and matched.
fn run_vector(v: &BTreeMap<String, String>) -> bool {
    match v["kind"].as_str() {
        "block-gcm-siv" | "block-xts" => {
            let aad = BlockAad {
                volume_id: arr(v, "volume_id"),
                file_id: arr(v, "file_id"),
                block_index: v["block_index"].parse().unwrap(),
            };
            let cipher = if v["kind"] == "block-xts" {
                DataCipher::xts(&Key512::from_bytes(&arr(v, "key")))
            } else {
                DataCipher::gcm_siv(&Key256::from_bytes(&arr(v, "key")))
            };
            let mut slot = vec![0u8; cipher.slot_size()];
            cipher.seal(&aad, &arr(v, "nonce"), &block_plaintext(), &mut slot);
            assert_eq!(hex::encode(Sha256::digest(&slot)), v["slot_sha256"], "seal does not reproduce the vector");
            // Mutations a negative vector applies before opening.
            let mut open_aad = aad;
            if let Some(i) = v.get("open_block_index") {
                open_aad.block_index = i.parse().unwrap();
            }
            if v.contains_key("open_file_id") {
                open_aad.file_id = arr(v, "open_file_id");
            }
            if let Some(i) = v.get("flip_byte") {
                slot[i.parse::<usize>().unwrap()] ^= 1;
            }
            let mut plain = vec![0u8; 4096];
            cipher.open(&open_aad, &slot, &mut plain).is_ok() && plain[..] == block_plaintext()[..]
        }
        "dek-wrap" => {
            let kek = KeyWrapper::new(&Key256::from_bytes(&arr(v, "kek")));
            let aad = dek_aad(v);
            let wrapped = h(&v["wrapped"]);
            if let Some(nonce) = v.get("wrap_nonce") {
                let fresh =
                    kek.wrap_with_nonce(&Key256::from_bytes(&arr(v, "dek")), &aad, &h(nonce).try_into().unwrap());
                if v["expect"] == "success" {
                    assert_eq!(hex::encode(&fresh), v["wrapped"]);
                }
            }
            kek.unwrap::<32>(&wrapped, &aad).map(|k| k.expose() == &arr::<32>(v, "dek")).unwrap_or(false)
        }
        "name" => {
            let names = NameCipher::new(&Key256::from_bytes(&arr(v, "name_key")));
            let dir: [u8; 16] = arr(v, "dir_id");
            let sealed = match URL_SAFE_NO_PAD.decode(&v["backing_name"]) {
                Ok(s) => s,
                Err(_) => return false,
            };
            let encrypted = URL_SAFE_NO_PAD.encode(names.encrypt(NamePurpose::Entry, &dir, v["name"].as_bytes()));
            if v["expect"] == "success" {
                assert_eq!(encrypted, v["backing_name"]);
            }
            names.decrypt(NamePurpose::Entry, &dir, &sealed).map(|n| n == v["name"].as_bytes()).unwrap_or(false)
        }
        other => panic!("unknown vector kind {other}"),
    }
}

/// `"EVFSDEK1" || volume_id || file_id || u64le(extent) || kek_id`, as FORMAT.md states.
fn dek_aad(v: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = b"EVFSDEK1".to_vec();
    aad.extend_from_slice(&arr::<16>(v, "volume_id"));
    aad.extend_from_slice(&arr::<16>(v, "file_id"));
    aad.extend_from_slice(&v["extent"].parse::<u64>().unwrap().to_le_bytes());
    aad.extend_from_slice(&arr::<16>(v, "kek_id"));
    aad
}

#[test]
fn envelopefs_format_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let v = parse(&path);
        let ok = run_vector(&v);
        match v["expect"].as_str() {
            "success" => assert!(ok, "{}: expected success", path.display()),
            "failure" => assert!(!ok, "{}: expected failure", path.display()),
            e => panic!("{}: bad expect {e}", path.display()),
        }
        n += 1;
    }
    assert!(n >= 8, "only {n} vectors found");
}

/// Writes the success vectors from the current implementation (run once, by hand:
/// `cargo test --test vectors -- --ignored --nocapture`), then review and commit them.
#[test]
#[ignore]
fn print_vectors() {
    let plain = block_plaintext();
    let aad = BlockAad { volume_id: [0x11; 16], file_id: [0x22; 16], block_index: 5 };
    let k32: [u8; 32] = std::array::from_fn(|i| i as u8);
    let k64: [u8; 64] = std::array::from_fn(|i| i as u8);
    let nonce = [0x0c; 12];
    for (kind, cipher) in [
        ("gcm-siv", DataCipher::gcm_siv(&Key256::from_bytes(&k32))),
        ("xts", DataCipher::xts(&Key512::from_bytes(&k64))),
    ] {
        let mut slot = vec![0u8; cipher.slot_size()];
        cipher.seal(&aad, &nonce, &plain, &mut slot);
        println!("block-{kind} slot: {} sha256 {}", hex::encode(&slot[..32]), hex::encode(Sha256::digest(&slot)));
    }
    let kek = KeyWrapper::new(&Key256::from_bytes(&[0x33; 32]));
    let mut aad = b"EVFSDEK1".to_vec();
    aad.extend_from_slice(&[0x11; 16]);
    aad.extend_from_slice(&[0x22; 16]);
    aad.extend_from_slice(&3u64.to_le_bytes());
    aad.extend_from_slice(&[0x44; 16]);
    println!("wrapped: {}", hex::encode(kek.wrap_with_nonce(&Key256::from_bytes(&[0x55; 32]), &aad, &[0x0a; 12])));
    let names = NameCipher::new(&Key256::from_bytes(&[0x66; 32]));
    println!("name: {}", URL_SAFE_NO_PAD.encode(names.encrypt(NamePurpose::Entry, &[0x77; 16], b"hello.txt")));
}
