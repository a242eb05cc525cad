//! AWS Signature Version 4: AWS's published vectors, a Bedrock-shaped request, session
//! tokens, canonicalisation details and that no secret reaches `Debug`.
//!
//! Vectors marked "published" come from the aws-sig-v4-test-suite or the AWS General
//! Reference. Those marked "botocore" were produced with botocore's `SigV4Auth` for the same
//! inputs, since AWS publishes no vector for them.

use portcullis_certs::sigv4::{canonical_request, string_to_sign, UNSIGNED_PAYLOAD};
use portcullis_certs::{bedrock_region, sign, SignedHeaders, SigningRequest};
use time::macros::datetime;
use time::OffsetDateTime;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SUITE_TIME: OffsetDateTime = datetime!(2015-08-30 12:36:00 UTC);

/// A test-suite request to `example.amazonaws.com`, signing only `host` and `x-amz-date`.
fn suite_request<'a>(
    method: &'a str,
    query: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    payload_sha256_hex: &'a str,
) -> SigningRequest<'a> {
    SigningRequest {
        method,
        host: "example.amazonaws.com",
        path: "/",
        query,
        headers,
        payload_sha256_hex,
        sign_content_sha256: false,
    }
}

fn suite_sign(req: &SigningRequest<'_>) -> SignedHeaders {
    sign(req, AKID, SECRET, None, "us-east-1", "service", SUITE_TIME)
}

fn suite_authorization(signed_headers: &str, signature: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
         SignedHeaders={signed_headers}, Signature={signature}"
    )
}

// --- published vectors ---------------------------------------------------------------------

#[test]
fn get_vanilla_matches_published_vector() {
    let req = suite_request("GET", None, &[], EMPTY_SHA256);
    assert_eq!(
        *canonical_request(&req, None, SUITE_TIME),
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
         host;x-amz-date\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        string_to_sign(&req, None, "us-east-1", "service", SUITE_TIME),
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
         bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    let signed = suite_sign(&req);
    assert_eq!(
        *signed.authorization,
        suite_authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    );
    assert_eq!(signed.x_amz_date, "20150830T123600Z");
    assert_eq!(signed.x_amz_content_sha256, EMPTY_SHA256);
    assert!(signed.x_amz_security_token.is_none());
}

#[test]
fn get_vanilla_query_order_key_case_matches_published_vector() {
    let req = suite_request(
        "GET",
        Some("Param2=value2&Param1=value1"),
        &[],
        EMPTY_SHA256,
    );
    assert!(canonical_request(&req, None, SUITE_TIME)
        .starts_with("GET\n/\nParam1=value1&Param2=value2\n"));
    assert_eq!(
        *suite_sign(&req).authorization,
        suite_authorization(
            "host;x-amz-date",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        )
    );
}

#[test]
fn post_x_www_form_urlencoded_matches_published_vector() {
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    // SHA-256 of the body `Param1=value1`.
    let body_sha = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";
    let req = suite_request("POST", None, &headers, body_sha);
    assert_eq!(
        *suite_sign(&req).authorization,
        suite_authorization(
            "content-type;host;x-amz-date",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        )
    );
}

#[test]
fn get_header_value_trim_matches_published_vector() {
    let headers = [("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")];
    let req = suite_request("GET", None, &headers, EMPTY_SHA256);
    assert_eq!(
        *canonical_request(&req, None, SUITE_TIME),
        "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\
         x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        *suite_sign(&req).authorization,
        suite_authorization(
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
        )
    );
}

#[test]
fn iam_list_users_matches_general_reference_example() {
    let headers = [(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    )];
    let req = SigningRequest {
        method: "GET",
        host: "iam.amazonaws.com",
        path: "/",
        query: Some("Action=ListUsers&Version=2010-05-08"),
        headers: &headers,
        payload_sha256_hex: EMPTY_SHA256,
        sign_content_sha256: false,
    };
    assert_eq!(
        *canonical_request(&req, None, SUITE_TIME),
        "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
         content-type:application/x-www-form-urlencoded; charset=utf-8\n\
         host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
         content-type;host;x-amz-date\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        string_to_sign(&req, None, "us-east-1", "iam", SUITE_TIME),
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
         f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    );
    let signed = sign(&req, AKID, SECRET, None, "us-east-1", "iam", SUITE_TIME);
    assert_eq!(
        *signed.authorization,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, \
         Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    );
}

// --- Bedrock and session tokens ------------------------------------------------------------

const BEDROCK_PATH: &str =
    "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke-with-response-stream";
const BEDROCK_TOKEN: &str = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN";
// SHA-256 of {"anthropic_version":"bedrock-2023-05-31","max_tokens":16,
// "messages":[{"role":"user","content":"hi"}]}
const BEDROCK_BODY_SHA: &str = "616eb59224eb795b641b4c541ad9ee8b939a1e8798f73b54fce66bb79ddbb992";
const BEDROCK_TIME: OffsetDateTime = datetime!(2024-07-01 09:30:05 UTC);

fn bedrock_request<'a>(headers: &'a [(&'a str, &'a str)]) -> SigningRequest<'a> {
    SigningRequest {
        method: "POST",
        host: "bedrock-runtime.us-east-1.amazonaws.com",
        path: BEDROCK_PATH,
        query: None,
        headers,
        payload_sha256_hex: BEDROCK_BODY_SHA,
        sign_content_sha256: true,
    }
}

const BEDROCK_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/vnd.amazon.eventstream"),
];

#[test]
fn bedrock_model_id_colon_is_double_encoded_in_canonical_uri() {
    let req = bedrock_request(&BEDROCK_HEADERS);
    let canonical = canonical_request(&req, None, BEDROCK_TIME);
    let uri = canonical.lines().nth(1);
    assert_eq!(
        uri,
        Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/invoke-with-response-stream")
    );
}

#[test]
fn bedrock_request_with_session_token_matches_botocore() {
    let req = bedrock_request(&BEDROCK_HEADERS);
    assert_eq!(
        *canonical_request(&req, Some(BEDROCK_TOKEN), BEDROCK_TIME),
        "POST\n\
         /model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/invoke-with-response-stream\n\
         \n\
         accept:application/vnd.amazon.eventstream\n\
         content-type:application/json\n\
         host:bedrock-runtime.us-east-1.amazonaws.com\n\
         x-amz-content-sha256:616eb59224eb795b641b4c541ad9ee8b939a1e8798f73b54fce66bb79ddbb992\n\
         x-amz-date:20240701T093005Z\n\
         x-amz-security-token:FQoGZXIvYXdzEXAMPLESESSIONTOKEN\n\
         \n\
         accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token\n\
         616eb59224eb795b641b4c541ad9ee8b939a1e8798f73b54fce66bb79ddbb992"
    );
    let signed = sign(
        &req,
        AKID,
        SECRET,
        Some(BEDROCK_TOKEN),
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    assert_eq!(
        *signed.authorization,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240701/us-east-1/bedrock/aws4_request, \
         SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date;\
         x-amz-security-token, \
         Signature=063b2100337752d176aba42b2cea71bfd28a80a54b93755fdb10c6b0218bb581"
    );
    assert_eq!(signed.x_amz_date, "20240701T093005Z");
    assert_eq!(signed.x_amz_content_sha256, BEDROCK_BODY_SHA);
    assert_eq!(
        signed.x_amz_security_token.as_deref().map(String::as_str),
        Some(BEDROCK_TOKEN)
    );
}

#[test]
fn session_token_is_signed_on_get_vanilla_as_botocore_does() {
    let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuF\
                 qwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp\
                 2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d\
                 +xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rv\
                 x3iSIlTJabIQwj2ICCR/oLxBA==";
    let req = suite_request("GET", None, &[], EMPTY_SHA256);
    let signed = sign(
        &req,
        AKID,
        SECRET,
        Some(token),
        "us-east-1",
        "service",
        SUITE_TIME,
    );
    assert_eq!(
        *signed.authorization,
        suite_authorization(
            "host;x-amz-date;x-amz-security-token",
            "c8db8b9676d526f735dac5330f17623554c6cad1e2980d321903e9a3884c051b"
        )
    );
}

#[test]
fn without_session_token_no_token_header_is_signed() {
    let req = bedrock_request(&BEDROCK_HEADERS);
    let signed = sign(
        &req,
        AKID,
        SECRET,
        None,
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    assert!(signed.x_amz_security_token.is_none());
    assert!(signed
        .authorization
        .contains("SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date, "));
}

#[test]
fn agent_sigv4_headers_are_ignored_in_favour_of_the_signers() {
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/vnd.amazon.eventstream"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AGENT/..."),
        ("X-Amz-Date", "20000101T000000Z"),
        ("X-Amz-Security-Token", "agent-token"),
        ("X-Amz-Content-Sha256", "agent-hash"),
        ("Host", "evil.example"),
        ("User-Agent", "agent/1.0"),
        ("Connection", "keep-alive"),
    ];
    let with_agent_headers = sign(
        &bedrock_request(&headers),
        AKID,
        SECRET,
        Some(BEDROCK_TOKEN),
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    let clean = sign(
        &bedrock_request(&BEDROCK_HEADERS),
        AKID,
        SECRET,
        Some(BEDROCK_TOKEN),
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    assert_eq!(*with_agent_headers.authorization, *clean.authorization);
}

#[test]
fn unsigned_payload_is_signed_as_the_literal_marker() {
    let req = SigningRequest {
        payload_sha256_hex: UNSIGNED_PAYLOAD,
        ..bedrock_request(&BEDROCK_HEADERS)
    };
    let canonical = canonical_request(&req, None, BEDROCK_TIME);
    assert!(canonical.ends_with("\nUNSIGNED-PAYLOAD"));
    assert!(canonical.contains("\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"));
    let signed = sign(
        &req,
        AKID,
        SECRET,
        None,
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    assert_eq!(signed.x_amz_content_sha256, UNSIGNED_PAYLOAD);
}

// --- canonicalisation details --------------------------------------------------------------

#[test]
fn header_values_are_trimmed_and_inner_runs_collapsed() {
    let headers = [("X-Custom", "  a \t  b   c  "), ("x-other", "v")];
    let req = suite_request("GET", None, &headers, EMPTY_SHA256);
    let canonical = canonical_request(&req, None, SUITE_TIME);
    assert!(canonical.contains("\nx-custom:a b c\nx-other:v\n"));
    assert!(canonical.contains("\nhost;x-amz-date;x-custom;x-other\n"));
}

#[test]
fn repeated_headers_are_joined_with_commas_in_send_order() {
    let headers = [("X-Multi", "b"), ("x-multi", " a "), ("X-MULTI", "c")];
    let req = suite_request("GET", None, &headers, EMPTY_SHA256);
    let canonical = canonical_request(&req, None, SUITE_TIME);
    assert!(canonical.contains("\nx-multi:b,a,c\n"));
    assert!(canonical.contains("\nhost;x-amz-date;x-multi\n"));
}

#[test]
fn query_is_sorted_by_name_then_value_and_reencoded() {
    let req = suite_request(
        "GET",
        Some("b=2&a=z&a=y&c&sp=a%20b&plus=a+b&t=%7e&star=*&u=%c3%a9"),
        &[],
        EMPTY_SHA256,
    );
    let canonical = canonical_request(&req, None, SUITE_TIME);
    assert_eq!(
        canonical.lines().nth(2),
        Some("a=y&a=z&b=2&c=&plus=a%20b&sp=a%20b&star=%2A&t=~&u=%C3%A9")
    );
}

#[test]
fn query_names_sort_by_byte_order_so_uppercase_comes_first() {
    let req = suite_request("GET", Some("a=1&B=2&_=3"), &[], EMPTY_SHA256);
    let canonical = canonical_request(&req, None, SUITE_TIME);
    assert_eq!(canonical.lines().nth(2), Some("B=2&_=3&a=1"));
}

#[test]
fn x_amz_date_is_utc_whatever_the_offset_of_now() {
    let req = suite_request("GET", None, &[], EMPTY_SHA256);
    let in_paris = datetime!(2015-08-30 14:36:00 +02:00);
    let signed = sign(&req, AKID, SECRET, None, "us-east-1", "service", in_paris);
    assert_eq!(signed.x_amz_date, "20150830T123600Z");
    assert_eq!(*signed.authorization, *suite_sign(&req).authorization);
}

#[test]
fn signed_headers_debug_shows_no_secret_token_or_signature() {
    let req = bedrock_request(&BEDROCK_HEADERS);
    let signed = sign(
        &req,
        AKID,
        SECRET,
        Some(BEDROCK_TOKEN),
        "us-east-1",
        "bedrock",
        BEDROCK_TIME,
    );
    let debug = format!("{signed:?}");
    let signature = signed
        .authorization
        .rsplit("Signature=")
        .next()
        .unwrap_or_default();
    assert_eq!(signature.len(), 64);
    assert!(!debug.contains(SECRET));
    assert!(!debug.contains(BEDROCK_TOKEN));
    assert!(!debug.contains(signature));
    assert!(debug.contains("<redacted>"));
    assert!(debug.contains("20240701T093005Z"));
}

// --- bedrock_region ------------------------------------------------------------------------

#[test]
fn bedrock_region_reads_runtime_and_fips_hosts() {
    assert_eq!(
        bedrock_region("bedrock-runtime.us-east-1.amazonaws.com"),
        Some("us-east-1")
    );
    assert_eq!(
        bedrock_region("bedrock-runtime-fips.us-gov-west-1.amazonaws.com"),
        Some("us-gov-west-1")
    );
    assert_eq!(
        bedrock_region("bedrock-runtime.eu-central-2.amazonaws.com:443"),
        Some("eu-central-2")
    );
    assert_eq!(
        bedrock_region("bedrock-runtime.ap-southeast-2.amazonaws.com."),
        Some("ap-southeast-2")
    );
}

#[test]
fn bedrock_region_rejects_other_hosts() {
    for host in [
        "bedrock.us-east-1.amazonaws.com",
        "bedrock-runtime.amazonaws.com",
        "bedrock-runtime..amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com.evil.example",
        "bedrock-runtime.us.east-1.amazonaws.com",
        "bedrock-runtime.US-EAST-1.amazonaws.com",
        "bedrock-runtime.-us-east-1.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com:",
        "bedrock-runtime.us-east-1.amazonaws.com:x",
        "xbedrock-runtime.us-east-1.amazonaws.com",
        "api.openai.com",
        "",
    ] {
        assert_eq!(bedrock_region(host), None, "{host}");
    }
}
