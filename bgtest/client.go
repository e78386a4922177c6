package bgtest

import (
	"crypto/tls"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The sign-in form's fields and the values of FieldStep.
const (
	FieldStep     = "break_glass_step"
	FieldCSRF     = "csrf_token"
	FieldEmail    = "email"
	FieldPassword = "password"
	FieldReason   = "reason"
	FieldCode     = "code"

	StepLogin   = "login"
	StepCode    = "code"
	StepRestart = "restart"
)

// LoginForm is the password step's form; an empty reason is left out.
func LoginForm(csrf, email, password, reason string) url.Values {
	f := url.Values{FieldStep: {StepLogin}, FieldCSRF: {csrf}, FieldEmail: {email}, FieldPassword: {password}}
	if reason != "" {
		f.Set(FieldReason, reason)
	}
	return f
}

// CodeForm is the code step's form.
func CodeForm(csrf, code string) url.Values {
	return url.Values{FieldStep: {StepCode}, FieldCSRF: {csrf}, FieldCode: {code}}
}

// Client is one browser: its cookies, its transport, its headers.
type Client struct {
	Base   string      // what request paths are appended to, e.g. "http://127.0.0.1:8080"
	Name   string      // names the client in failure messages (its address, say); may be empty
	Header http.Header // sent with every request, e.g. X-Forwarded-For

	t  testing.TB
	hc *http.Client
}

// New is a client with an empty cookie jar sending its requests through rt.
func New(t testing.TB, rt http.RoundTripper, base string) *Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Client{Base: base, Header: http.Header{}, t: t, hc: &http.Client{
		Transport:     rt,
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}}
}

// At is the same browser (cookies, transport, a copy of Header) talking to
// base: another instance of a cluster, say.
func (c *Client) At(base string) *Client {
	cp := *c
	cp.Base, cp.Header = base, c.Header.Clone()
	return &cp
}

// Jar is the client's cookie jar, shared with the clients made by At.
func (c *Client) Jar() http.CookieJar { return c.hc.Jar }

// OverTCP is a transport whose connections come from localIP ("" for any),
// without keep-alives. Set its TLSClientConfig for an https base.
func OverTCP(localIP string) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	return &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
}

// HandlerTransport runs each request through h in the test's process, as a
// server would hand it over: r.RemoteAddr is remoteAddr, r.Host the URL's
// host, and r.TLS is set when the URL's scheme is https.
func HandlerTransport(h http.Handler, remoteAddr string) http.RoundTripper {
	return handlerTransport{h, remoteAddr}
}

type handlerTransport struct {
	h          http.Handler
	remoteAddr string
}

func (ht handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		defer req.Body.Close()
	}
	r := httptest.NewRequestWithContext(req.Context(), req.Method, req.URL.RequestURI(), req.Body)
	r.Header = req.Header.Clone()
	r.ContentLength = req.ContentLength
	r.Host = req.URL.Host
	if req.Host != "" {
		r.Host = req.Host
	}
	r.RemoteAddr = ht.remoteAddr
	if req.URL.Scheme == "https" {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	}
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// Reply is an answer, read whole.
type Reply struct {
	Status int
	Header http.Header
	Body   string
}

// CSRF is the page's CSRF token; the test fails if the page has no form.
func (r Reply) CSRF(t testing.TB) string {
	t.Helper()
	return r.Field(t, FieldCSRF)
}

// Field is the value of the page's field name (its value attribute,
// unescaped); the test fails if the page has no such field.
func (r Reply) Field(t testing.TB, name string) string {
	t.Helper()
	m := regexp.MustCompile(`name="` + regexp.QuoteMeta(name) + `" value="([^"]*)"`).FindStringSubmatch(r.Body)
	if m == nil {
		t.Fatalf("the page has no field %s (status %d):\n%s", name, r.Status, r.Body)
	}
	return html.UnescapeString(m[1])
}

// Do sends a request, with form as its urlencoded body if not nil and hdr
// on top of Header. The test fails if no answer comes.
func (c *Client) Do(method, path string, form url.Values, hdr map[string]string) Reply {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.Base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if h := c.Header.Clone(); h != nil {
		req.Header = h
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s%s: %v", method, path, c.from(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s%s: reading the answer: %v", method, path, c.from(), err)
	}
	return Reply{resp.StatusCode, resp.Header, string(b)}
}

func (c *Client) from() string {
	if c.Name == "" {
		return ""
	}
	return " from " + c.Name
}

// Get is Do("GET", path, nil, nil).
func (c *Client) Get(path string) Reply {
	c.t.Helper()
	return c.Do("GET", path, nil, nil)
}

// Login GETs path for its CSRF token and POSTs the password step's form,
// both with hdr; it returns the answer to the POST.
func (c *Client) Login(path, email, password, reason string, hdr map[string]string) Reply {
	c.t.Helper()
	tok := c.Do("GET", path, nil, hdr).CSRF(c.t)
	return c.Do("POST", path, LoginForm(tok, email, password, reason), hdr)
}

// SubmitCode GETs path (the code page) for its CSRF token and POSTs code.
func (c *Client) SubmitCode(path, code string) Reply {
	c.t.Helper()
	tok := c.Get(path).CSRF(c.t)
	return c.Do("POST", path, CodeForm(tok, code), nil)
}

// SignIn runs the whole flow on path: the test fails unless the password
// step answers 303; then it GETs the code page, calls code for the code
// and returns the answer to it (303 when it is right).
func (c *Client) SignIn(path, email, password string, code func() string) Reply {
	c.t.Helper()
	if r := c.Login(path, email, password, "", nil); r.Status != http.StatusSeeOther {
		c.t.Fatalf("right password%s: status %d, Location %q\n%s", c.from(), r.Status, r.Header.Get("Location"), r.Body)
	}
	tok := c.Get(path).CSRF(c.t)
	return c.Do("POST", path, CodeForm(tok, code()), nil)
}
