//! Reading and decoding request bodies: size limit, JSON or form, strict UTF-8.

use actix_web::web::{self, BytesMut};
use actix_web::HttpRequest;
use futures_util::StreamExt;

use super::errors::ApiError;

/// Largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;

/// Reads the whole body, refusing more than [`MAX_BODY`] bytes with 413.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<BytesMut, ApiError> {
    let too_large = || ApiError::TooLarge(format!("body is over the limit of {MAX_BODY} bytes"));
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY {
            return Err(too_large());
        }
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses `application/x-www-form-urlencoded`, refusing fields that are not UTF-8 once decoded.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let mut fields = Vec::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, |&b| b == b'=');
        let key = decode_component(it.next().unwrap_or_default())?;
        let value = decode_component(it.next().unwrap_or_default())?;
        fields.push((key, value));
    }
    Ok(fields)
}

fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => {
                        return Err(ApiError::BadRequest(
                            "malformed percent-encoding in form".into(),
                        ))
                    }
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest("form field is not valid UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_percent_decoded() {
        let f = parse_form(b"saga_id=a%20b&payload=%7B%22x%22%3A1%7D&saga=de+fault").unwrap();
        assert_eq!(f[0], ("saga_id".into(), "a b".into()));
        assert_eq!(f[1].1, "{\"x\":1}");
        assert_eq!(f[2].1, "de fault");
    }

    #[test]
    fn invalid_utf8_and_bad_escapes_are_refused() {
        assert!(parse_form(b"saga_id=%FF%FE").is_err());
        assert!(parse_form(b"saga_id=%G1").is_err());
        assert!(parse_form(b"saga_id=%4").is_err());
    }
}
