package awsauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The S3 examples of "Signature Calculations for the Authorization
// Header: Transferring Payload in a Single Chunk" (Amazon S3 API
// reference), and the AWS general reference's SigV4 examples (the IAM
// ListUsers request and the test suite's get-vanilla).
var (
	s3ExampleKeys = Credentials{AccessKeyID: "AKIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
	s3ExampleTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	suiteKeys     = Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
	suiteTime     = time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)
)

// Sign's policy (host, x-amz-*, content-type, content-md5) signs exactly
// the headers of these two S3 examples, so Sign must give their
// published Authorization headers byte for byte.
func TestSignPublishedS3Examples(t *testing.T) {
	for _, tc := range []struct{ name, url, want string }{
		{"GET bucket lifecycle", "https://examplebucket.s3.amazonaws.com/?lifecycle",
			"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, " +
				"SignedHeaders=host;x-amz-content-sha256;x-amz-date, " +
				"Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"},
		{"GET bucket (list objects)", "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
			"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, " +
				"SignedHeaders=host;x-amz-content-sha256;x-amz-date, " +
				"Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"},
		// The same, with the query's parameters out of order: Sign sorts them.
		{"GET bucket (list objects), unsorted query", "https://examplebucket.s3.amazonaws.com/?prefix=J&max-keys=2",
			"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, " +
				"SignedHeaders=host;x-amz-content-sha256;x-amz-date, " +
				"Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			Sign(req, s3ExampleKeys, "s3", "us-east-1", EmptyPayloadHash, s3ExampleTime)
			if got := req.Header.Get("Authorization"); got != tc.want {
				t.Errorf("Authorization:\n got %s\nwant %s", got, tc.want)
			}
			if got := req.Header.Get("X-Amz-Date"); got != "20130524T000000Z" {
				t.Errorf("X-Amz-Date = %q", got)
			}
			if got := req.Header.Get("X-Amz-Content-Sha256"); got != EmptyPayloadHash {
				t.Errorf("X-Amz-Content-Sha256 = %q", got)
			}
		})
	}
}

// refSignature is SigV4 from a canonical request, written from the spec
// apart from sign.go. It is checked against the published examples below,
// then stands in for them where Sign's header policy differs from an
// example's (the examples sign Range and Date; Sign never does, and
// always signs x-amz-content-sha256).
func refSignature(secret, amzDate, region, service, canonical string) string {
	mac := func(key []byte, s string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		return m.Sum(nil)
	}
	sum := sha256.Sum256([]byte(canonical))
	scope := amzDate[:8] + "/" + region + "/" + service + "/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	key := mac(mac(mac(mac([]byte("AWS4"+secret), amzDate[:8]), region), service), "aws4_request")
	return hex.EncodeToString(mac(key, toSign))
}

func lines(ls ...string) string { return strings.Join(ls, "\n") }

const putExampleHash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072" // "Welcome to Amazon S3."

func TestRefSignatureMatchesPublishedExamples(t *testing.T) {
	for _, tc := range []struct {
		name, secret, date, service, canonical, canonicalHash, want string
	}{
		{"S3 GET object with Range", s3ExampleKeys.SecretAccessKey, "20130524T000000Z", "s3", lines(
			"GET", "/test.txt", "",
			"host:examplebucket.s3.amazonaws.com", "range:bytes=0-9",
			"x-amz-content-sha256:"+EmptyPayloadHash, "x-amz-date:20130524T000000Z", "",
			"host;range;x-amz-content-sha256;x-amz-date", EmptyPayloadHash),
			"7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
			"f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"},
		{"S3 PUT object", s3ExampleKeys.SecretAccessKey, "20130524T000000Z", "s3", lines(
			"PUT", "/test%24file.text", "",
			"date:Fri, 24 May 2013 00:00:00 GMT", "host:examplebucket.s3.amazonaws.com",
			"x-amz-content-sha256:"+putExampleHash, "x-amz-date:20130524T000000Z",
			"x-amz-storage-class:REDUCED_REDUNDANCY", "",
			"date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class", putExampleHash),
			"", "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"},
		{"IAM ListUsers", suiteKeys.SecretAccessKey, "20150830T123600Z", "iam", lines(
			"GET", "/", "Action=ListUsers&Version=2010-05-08",
			"content-type:application/x-www-form-urlencoded; charset=utf-8",
			"host:iam.amazonaws.com", "x-amz-date:20150830T123600Z", "",
			"content-type;host;x-amz-date", EmptyPayloadHash),
			"f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59",
			"5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"},
		{"test suite get-vanilla", suiteKeys.SecretAccessKey, "20150830T123600Z", "service", lines(
			"GET", "/", "", "host:example.amazonaws.com", "x-amz-date:20150830T123600Z", "",
			"host;x-amz-date", EmptyPayloadHash),
			"bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
			"5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.canonicalHash != "" {
				if got := PayloadHash([]byte(tc.canonical)); got != tc.canonicalHash {
					t.Errorf("canonical request hash %s, published %s", got, tc.canonicalHash)
				}
			}
			if got := refSignature(tc.secret, tc.date, "us-east-1", tc.service, tc.canonical); got != tc.want {
				t.Errorf("signature %s, published %s", got, tc.want)
			}
		})
	}
}

// signature is the Signature= part of an Authorization header.
func signature(t *testing.T, req *http.Request) (signedHeaders, sig string) {
	t.Helper()
	auth := req.Header.Get("Authorization")
	_, sh, ok1 := strings.Cut(auth, "SignedHeaders=")
	sh, _, _ = strings.Cut(sh, ",")
	_, sig, ok2 := strings.Cut(auth, "Signature=")
	if !ok1 || !ok2 {
		t.Fatalf("Authorization %q lacks SignedHeaders or Signature", auth)
	}
	return sh, sig
}

// The published requests that sign headers Sign does not (Range, Date)
// or omit one it always signs: Sign must give what the checked reference
// gives for the canonical request Sign's policy makes of them.
func TestSignAgainstReference(t *testing.T) {
	t.Run("S3 GET object with Range: Range is sent but not signed", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "https://examplebucket.s3.amazonaws.com/test.txt", nil)
		req.Header.Set("Range", "bytes=0-9")
		Sign(req, s3ExampleKeys, "s3", "us-east-1", EmptyPayloadHash, s3ExampleTime)
		sh, sig := signature(t, req)
		want := refSignature(s3ExampleKeys.SecretAccessKey, "20130524T000000Z", "us-east-1", "s3", lines(
			"GET", "/test.txt", "",
			"host:examplebucket.s3.amazonaws.com",
			"x-amz-content-sha256:"+EmptyPayloadHash, "x-amz-date:20130524T000000Z", "",
			"host;x-amz-content-sha256;x-amz-date", EmptyPayloadHash))
		if sh != "host;x-amz-content-sha256;x-amz-date" || sig != want {
			t.Errorf("SignedHeaders=%s Signature=%s, want host;x-amz-content-sha256;x-amz-date and %s", sh, sig, want)
		}
	})
	t.Run("S3 PUT object: path escaped, x-amz-storage-class signed, Date not", func(t *testing.T) {
		body := "Welcome to Amazon S3."
		req, _ := http.NewRequest(http.MethodPut, "https://examplebucket.s3.amazonaws.com/test$file.text", strings.NewReader(body))
		req.Header.Set("Date", "Fri, 24 May 2013 00:00:00 GMT")
		req.Header.Set("x-amz-storage-class", "REDUCED_REDUNDANCY")
		Sign(req, s3ExampleKeys, "s3", "us-east-1", PayloadHash([]byte(body)), s3ExampleTime)
		sh, sig := signature(t, req)
		want := refSignature(s3ExampleKeys.SecretAccessKey, "20130524T000000Z", "us-east-1", "s3", lines(
			"PUT", "/test%24file.text", "",
			"host:examplebucket.s3.amazonaws.com",
			"x-amz-content-sha256:"+putExampleHash, "x-amz-date:20130524T000000Z",
			"x-amz-storage-class:REDUCED_REDUNDANCY", "",
			"host;x-amz-content-sha256;x-amz-date;x-amz-storage-class", putExampleHash))
		if sh != "host;x-amz-content-sha256;x-amz-date;x-amz-storage-class" || sig != want {
			t.Errorf("SignedHeaders=%s Signature=%s, want %s", sh, sig, want)
		}
		// What goes on the wire is the path that was signed.
		if got := req.URL.EscapedPath(); got != "/test%24file.text" {
			t.Errorf("path sent %q, signed /test%%24file.text", got)
		}
	})
	t.Run("IAM ListUsers: content-type signed, session token added", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers", nil)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded;  charset=utf-8 ") // spaces collapsed and trimmed
		keys := suiteKeys
		keys.SessionToken = "session-token"
		Sign(req, keys, "iam", "us-east-1", EmptyPayloadHash, suiteTime)
		sh, sig := signature(t, req)
		want := refSignature(suiteKeys.SecretAccessKey, "20150830T123600Z", "us-east-1", "iam", lines(
			"GET", "/", "Action=ListUsers&Version=2010-05-08",
			"content-type:application/x-www-form-urlencoded; charset=utf-8",
			"host:iam.amazonaws.com", "x-amz-content-sha256:"+EmptyPayloadHash,
			"x-amz-date:20150830T123600Z", "x-amz-security-token:session-token", "",
			"content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token", EmptyPayloadHash))
		if sig != want {
			t.Errorf("SignedHeaders=%s Signature=%s, want %s", sh, sig, want)
		}
		if got := req.Header.Get("X-Amz-Security-Token"); got != "session-token" {
			t.Errorf("X-Amz-Security-Token = %q", got)
		}
		if !strings.HasPrefix(req.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, ") {
			t.Errorf("Authorization = %q", req.Header.Get("Authorization"))
		}
	})
}

// Signing again (a retry) replaces what the first signing set.
func TestSignTwice(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, "https://examplebucket.s3.amazonaws.com/?lifecycle", nil)
	Sign(req, Credentials{AccessKeyID: "OLD", SecretAccessKey: "old", SessionToken: "old-token"}, "s3", "us-east-1", UnsignedPayload, time.Now())
	Sign(req, s3ExampleKeys, "s3", "us-east-1", EmptyPayloadHash, s3ExampleTime)
	if _, sig := signature(t, req); sig != "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543" {
		t.Errorf("re-signed signature %s", sig)
	}
	if len(req.Header.Values("Authorization")) != 1 || req.Header.Get("X-Amz-Security-Token") != "" {
		t.Errorf("headers left from the first signing: %v", req.Header)
	}
}

func TestCanonicalQuery(t *testing.T) {
	for raw, want := range map[string]string{
		"":                                "",
		"lifecycle":                       "lifecycle=",
		"Param2=value2&Param1=value1":     "Param1=value1&Param2=value2",
		"a=2&a=1&b":                       "a=1&a=2&b=",
		"prefix=a+b&x=%2F%7e&y=caf%C3%A9": "prefix=a%20b&x=%2F~&y=caf%C3%A9",
	} {
		if got := canonicalQuery(raw); got != want {
			t.Errorf("canonicalQuery(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestEscape(t *testing.T) {
	if got := Escape("a b/c~d*e+é"); got != "a%20b%2Fc~d%2Ae%2B%C3%A9" {
		t.Errorf("Escape = %q", got)
	}
	if got := EscapePath("/dir name/k$y"); got != "/dir%20name/k%24y" {
		t.Errorf("EscapePath = %q", got)
	}
}
