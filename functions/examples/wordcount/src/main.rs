//! An external nocturne function binary: two handlers in one executable.
//!
//! * `wordcount` returns the number of whitespace-separated words of its input
//!   as JSON (`{"words":N}`); `?lines=1` also counts lines.
//! * `shout` upper-cases its input and passes it through the built-in `bar`
//!   function with an internal call — showing `ctx.invoke` from user code.
//!
//! Deploy it with `functions/examples/wordcount/nocturne.toml` (see the README).

use nocturne_functions::{Ctx, Error, Functions};

fn wordcount(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let text =
        std::str::from_utf8(input).map_err(|_| Error::with_status(400, "input is not UTF-8"))?;
    let words = text.split_whitespace().count();
    ctx.set_content_type("application/json");
    let out = if ctx.query_param("lines") == Some("1") {
        format!("{{\"words\":{words},\"lines\":{}}}", text.lines().count())
    } else {
        format!("{{\"words\":{words}}}")
    };
    Ok(out.into_bytes())
}

fn shout(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let loud = input.to_ascii_uppercase();
    Ok(ctx.invoke("bar", &loud)?)
}

fn main() {
    nocturne_functions::serve(
        Functions::new()
            .handler("wordcount", wordcount)
            .handler("shout", shout),
    );
}
