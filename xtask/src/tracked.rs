//! The modules whose struct fields the offsets database tracks by module version, and which of
//! their versions exist on the module proxy.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use offsets::version::Version;

/// A module gotel reads structs of.
pub struct Tracked {
    pub module: &'static str,
    /// The oldest version gotel supports.
    pub oldest: &'static str,
    /// A program linking every struct gotel reads from the module (it never runs).
    pub main_go: &'static str,
}

/// go-redis of either major version: the same program, with the module's import path.
macro_rules! go_redis {
    ($module:literal, $oldest:literal) => {
        Tracked {
            module: $module,
            oldest: $oldest,
            main_go: concat!(
                r#"package main

import (
	"context"
	"fmt"
	"os"

	""#,
                $module,
                r#""
)

func main() {
	if len(os.Args) > 99 {
		c := redis.NewClient(&redis.Options{Addr: os.Args[1]})
		fmt.Println(c.Get(context.Background(), os.Args[2]).Err())
	}
}
"#
            ),
        }
    };
}

pub const TRACKED: &[Tracked] = &[
    Tracked {
        module: "github.com/lib/pq",
        oldest: "v1.10.0",
        main_go: r#"package main

import (
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/lib/pq"
)

func main() {
	if len(os.Args) > 99 {
		db, _ := sql.Open("postgres", os.Args[1])
		var e *pq.Error
		if err := db.Ping(); errors.As(err, &e) {
			fmt.Println(e.Code)
		}
	}
}
"#,
    },
    Tracked {
        module: "github.com/jackc/pgx/v5",
        oldest: "v5.0.0",
        main_go: r#"package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func main() {
	if len(os.Args) > 99 {
		db, _ := sql.Open("pgx", os.Args[1])
		var e *pgconn.PgError
		if err := db.Ping(); errors.As(err, &e) {
			fmt.Println(e.Code)
		}
		conn, _ := pgx.Connect(context.Background(), os.Args[1])
		b := &pgx.Batch{}
		b.Queue(os.Args[2])
		fmt.Println(conn.SendBatch(context.Background(), b).Close())
	}
}
"#,
    },
    Tracked {
        module: "github.com/go-sql-driver/mysql",
        oldest: "v1.5.0",
        main_go: r#"package main

import (
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/go-sql-driver/mysql"
)

func main() {
	if len(os.Args) > 99 {
		db, _ := sql.Open("mysql", os.Args[1])
		var e *mysql.MySQLError
		if err := db.Ping(); errors.As(err, &e) {
			fmt.Println(e.Number)
		}
	}
}
"#,
    },
    go_redis!("github.com/redis/go-redis/v9", "v9.0.0"),
    go_redis!("github.com/go-redis/redis/v8", "v8.11.0"),
];

/// A version to probe; a guessed one may not exist, and is skipped if it cannot be downloaded.
pub struct Release {
    pub version: String,
    pub guessed: bool,
}

/// Every release of `t.module` from `t.oldest` on: those the proxy lists, and the first
/// release of every minor version in between, which a partial listing may leave out.
/// Ascending.
pub fn releases(goroot: &Path, t: &Tracked) -> anyhow::Result<Vec<Release>> {
    let dir = std::env::temp_dir().join(format!("gotel-versions-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("go.mod"), "module gotel.dev/offsets/versions\n")?;
    let out = Command::new(goroot.join("bin/go"))
        .args(["list", "-m", "-versions", t.module])
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running go list -m -versions")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!("listing {}: {}", t.module, String::from_utf8_lossy(&out.stderr).trim());
    }
    let oldest = Version::parse(t.oldest).context("oldest version")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let mut versions: Vec<(Version, bool)> = listed
        .split_whitespace()
        .skip(1)
        .filter_map(Version::parse)
        .filter(|v| v.pre.is_none() && *v >= oldest)
        .map(|v| (v, false))
        .collect();
    let newest = versions.iter().map(|(v, _)| v).max().cloned().unwrap_or_else(|| oldest.clone());
    let [major, first_minor, _] = oldest.numbers;
    if newest.numbers[0] == major {
        for minor in first_minor..=newest.numbers[1] {
            let first = Version { numbers: [major, minor, 0], pre: None };
            if !versions.iter().any(|(v, _)| *v == first) {
                versions.push((first, true));
            }
        }
    }
    versions.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(versions
        .into_iter()
        .map(|(v, guessed)| Release {
            version: format!("v{}.{}.{}", v.numbers[0], v.numbers[1], v.numbers[2]),
            guessed,
        })
        .collect())
}
