#![allow(clippy::unwrap_used)]

mod support;

use safe_coder_interact::{complete_at_path, expand_at_paths, AtLimits};
use support::{project, write};

#[tokio::test]
async fn file_with_line_numbers() {
    let (dir, sb) = project();
    write(
        dir.path(),
        "src/main.rs",
        "fn main() {\n    println!(\"hi\");\n}\n",
    );
    let out = expand_at_paths("explain @src/main.rs please", &sb, AtLimits::default())
        .await
        .unwrap();
    assert!(
        out.text.starts_with("explain @src/main.rs please\n\n"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("File: src/main.rs (3 lines)"),
        "{}",
        out.text
    );
    assert!(out
        .text
        .contains("     1\tfn main() {\n     2\t    println!(\"hi\");\n     3\t}\n"));
    assert_eq!(out.files, ["src/main.rs"]);
    assert!(out.notes.is_empty());

    // An absolute path inside the project and trailing punctuation work too.
    let abs = format!(
        "look at @{}/src/main.rs.",
        dir.path().canonicalize().unwrap().display()
    );
    let out = expand_at_paths(&abs, &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["src/main.rs"]);
}

#[tokio::test]
async fn directory_listing() {
    let (dir, sb) = project();
    write(dir.path(), "src/lib.rs", "x");
    write(dir.path(), "src/util/mod.rs", "yy");
    write(dir.path(), ".git/HEAD", "ref");
    let out = expand_at_paths("what is in @src", &sb, AtLimits::default())
        .await
        .unwrap();
    assert!(
        out.text
            .contains("Directory: src/\n  lib.rs (1 B)\n  util/\n    mod.rs (2 B)\n"),
        "{}",
        out.text
    );
    assert!(out.files.is_empty());
    let out = expand_at_paths("@.", &sb, AtLimits::default())
        .await
        .unwrap();
    assert!(out.text.contains("Directory: ./\n"), "{}", out.text);
    assert!(
        !out.text.contains("HEAD"),
        ".git is not listed: {}",
        out.text
    );
}

#[tokio::test]
async fn glob_expands_by_listing_the_sandbox() {
    let (dir, sb) = project();
    write(dir.path(), "src/a.rs", "a\n");
    write(dir.path(), "src/deep/b.rs", "b\n");
    write(dir.path(), "src/c.txt", "c\n");
    write(dir.path(), "other/d.rs", "d\n");
    let out = expand_at_paths("@src/**/*.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["src/a.rs", "src/deep/b.rs"]);
    let out = expand_at_paths("@src/*.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["src/a.rs"]);
    let out = expand_at_paths("@**/*.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["other/d.rs", "src/a.rs", "src/deep/b.rs"]);
    // An existing path with glob characters is taken literally.
    write(dir.path(), "app/[id]/page.tsx", "export {}\n");
    let out = expand_at_paths("@app/[id]/page.tsx", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["app/[id]/page.tsx"]);
    let out = expand_at_paths("@*.nothing", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.notes, ["@*.nothing: no files match"]);
}

#[tokio::test]
async fn email_and_code_are_not_references() {
    let (dir, sb) = project();
    write(dir.path(), "bar.com", "should not be read");
    let text = "mail foo@bar.com, or call `obj@bar.com` \\@bar.com";
    let out = expand_at_paths(text, &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.text, "mail foo@bar.com, or call `obj@bar.com` @bar.com");
    assert!(out.files.is_empty() && out.notes.is_empty());
}

#[tokio::test]
async fn size_limits_give_a_note() {
    let (dir, sb) = project();
    write(dir.path(), "big.txt", "x\n".repeat(200 * 1024));
    write(dir.path(), "small.txt", "ok\n");
    let out = expand_at_paths("@big.txt @small.txt", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["small.txt"]);
    assert_eq!(out.notes.len(), 1);
    assert!(
        out.notes[0].contains("@big.txt: skipped, 400.0 KiB is over the 256.0 KiB per-file limit"),
        "{:?}",
        out.notes
    );
    assert!(
        out.text.contains("Note: @big.txt: skipped"),
        "the model sees the note too"
    );

    // Total limit and max files.
    for i in 0..5 {
        write(dir.path(), &format!("many/f{i}.txt"), "y".repeat(100));
    }
    let limits = AtLimits {
        max_total_bytes: 250,
        ..AtLimits::default()
    };
    let out = expand_at_paths("@many/*.txt", &sb, limits).await.unwrap();
    assert_eq!(out.files.len(), 2);
    assert_eq!(out.notes.len(), 3);
    assert!(
        out.notes[0].contains("over the 250 B total limit"),
        "{:?}",
        out.notes
    );
    let limits = AtLimits {
        max_files: 3,
        ..AtLimits::default()
    };
    let out = expand_at_paths("@many", &sb, limits).await.unwrap();
    assert!(
        out.files.is_empty(),
        "a directory is a listing, not its files"
    );
    let out = expand_at_paths("@many/*", &sb, limits).await.unwrap();
    assert_eq!(out.files.len(), 3);
    assert_eq!(
        out.notes,
        ["2 more files not included: a message takes at most 3 files"]
    );
}

#[tokio::test]
async fn binary_skipped_missing_noted_outside_refused() {
    let (dir, sb) = project();
    write(
        dir.path(),
        "logo.png",
        [0x89u8, b'P', b'N', b'G', 0, 0, 1, 2],
    );
    let out = expand_at_paths(
        "@logo.png @nope.rs @../etc/passwd @/etc/passwd",
        &sb,
        AtLimits::default(),
    )
    .await
    .unwrap();
    assert!(out.files.is_empty());
    assert_eq!(out.notes.len(), 4, "{:?}", out.notes);
    assert!(out.notes[0].contains("@logo.png: skipped, binary file"));
    assert_eq!(
        out.notes[1],
        "@nope.rs: no such file or directory in the project"
    );
    // The one path rule (safe_coder_sandbox::normalize_in_root): a `..` that would climb
    // above the root is refused; one that stays inside is fine (next test).
    assert!(
        out.notes[2].contains("leaves the project root through '..'"),
        "{}",
        out.notes[2]
    );
    assert!(out.notes[3].contains("outside the project"));
}

#[tokio::test]
async fn a_dot_dot_that_stays_inside_the_project_is_followed() {
    let (dir, sb) = project();
    write(dir.path(), "a.rs", "fn a() {}\n");
    write(dir.path(), "src/lib.rs", "");
    let out = expand_at_paths("@src/../a.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["a.rs"], "{:?}", out.notes);
    assert!(out.text.contains("     1\tfn a() {}"), "{}", out.text);
}

#[tokio::test]
async fn a_few_stray_bytes_do_not_make_a_file_binary() {
    // The same rule as read_file (safe_coder_sandbox::decode_text): one Latin-1 byte in
    // a text file is shown as U+FFFD, not refused.
    let (dir, sb) = project();
    let mut latin = b"// caf".to_vec();
    latin.push(0xe9);
    latin.extend_from_slice(&[b'x'; 200]);
    latin.push(b'\n');
    write(dir.path(), "latin.rs", latin);
    let out = expand_at_paths("@latin.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["latin.rs"], "{:?}", out.notes);
    assert!(out.text.contains("// caf\u{FFFD}x"), "{}", out.text);
}

#[tokio::test]
async fn same_file_twice_is_included_once() {
    let (dir, sb) = project();
    write(dir.path(), "a.rs", "a\n");
    let out = expand_at_paths("@a.rs and @./a.rs and @*.rs", &sb, AtLimits::default())
        .await
        .unwrap();
    assert_eq!(out.files, ["a.rs"]);
    assert_eq!(out.text.matches("File: a.rs").count(), 1);
}

#[tokio::test]
async fn completion() {
    let (dir, sb) = project();
    write(dir.path(), "src/main.rs", "");
    write(dir.path(), "src/model.rs", "");
    write(dir.path(), "src/sub/x.rs", "");
    write(dir.path(), "README.md", "");
    write(dir.path(), ".hidden", "");
    write(dir.path(), "my file.txt", "");
    assert_eq!(
        complete_at_path("@src/m", &sb).await,
        ["src/main.rs", "src/model.rs"]
    );
    assert_eq!(
        complete_at_path("src/", &sb).await,
        ["src/main.rs", "src/model.rs", "src/sub/"]
    );
    assert_eq!(complete_at_path("@re", &sb).await, ["README.md"]);
    assert_eq!(complete_at_path("@.h", &sb).await, [".hidden"]);
    assert_eq!(complete_at_path("@my", &sb).await, ["my\\ file.txt"]);
    assert!(complete_at_path("@../", &sb).await.is_empty());
    assert!(complete_at_path("@nothing/", &sb).await.is_empty());
}
