package peer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// Header describes a checkpoint.
type Header struct {
	// Service is the name of the service whose state the checkpoint is.
	Service string
	// From is the sending node. A Client sends its own node ID and ignores
	// this field; a Server fills it in from the authenticated request.
	From string
	// Stamp is the checkpoint's epoch, fencing token and sequence number.
	Stamp core.Stamp
}

// DefaultCallTimeout is ClientConfig.Timeout's default.
const DefaultCallTimeout = 10 * time.Second

const (
	// maxCallBytes bounds the body of a call, maxReplyBytes its answer.
	maxCallBytes  = 1 << 20
	maxReplyBytes = 4 << 20
	// maxReasonBytes bounds the reason read from a refusal.
	maxReasonBytes = 4 << 10
	// expectContinueWait is how long a sender waits for the receiver to
	// admit a checkpoint before it sends the body anyway.
	expectContinueWait = 2 * time.Second
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Node is this node's ID (see core.ValidateName), sent as the sender
	// of every request.
	Node string
	// Secret is the cluster secret, the same on every node, at least
	// MinSecretLen bytes; use random bytes, not a password.
	Secret []byte
	// TLS, if set, makes the client speak HTTPS with this configuration
	// (RootCAs, and Certificates for client authentication). Nil means
	// plain HTTP, which gives no confidentiality (see the package
	// documentation).
	TLS *tls.Config
	// Timeout bounds each call (Call), and connecting to the receiver. It
	// does not bound SendCheckpoint's transfer or the receiver's Apply,
	// which take as long as the state's size needs: bound those with the
	// context. Zero means DefaultCallTimeout.
	Timeout time.Duration
	// Clock is where the client reads the time it stamps requests with.
	// Nil means core.SystemClock().
	Clock core.Clock
}

// Validate checks the configuration and says which field is wrong and how
// to fix it.
func (c ClientConfig) Validate() error {
	var errs []error
	if err := core.ValidateName("ClientConfig.Node", c.Node); err != nil {
		errs = append(errs, err)
	}
	if err := validateSecret("ClientConfig.Secret", c.Secret); err != nil {
		errs = append(errs, err)
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("ClientConfig.Timeout is %v: give a positive duration, or 0 for the default %v", c.Timeout, DefaultCallTimeout))
	}
	return errors.Join(errs...)
}

func validateSecret(field string, s []byte) error {
	if len(s) < MinSecretLen {
		return fmt.Errorf("%s is %d bytes long: give at least %d random bytes, the same on every node of the cluster", field, len(s), MinSecretLen)
	}
	return nil
}

// Client sends checkpoints and calls to other nodes. It is safe for
// concurrent use, and keeps idle connections for reuse until Close.
type Client struct {
	node    string
	secret  []byte
	clock   core.Clock
	timeout time.Duration
	scheme  string
	tr      *http.Transport
	hc      *http.Client
}

// NewClient returns a Client for c, or an error if c is invalid.
func NewClient(c ClientConfig) (*Client, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	cl := &Client{
		node:    c.Node,
		secret:  bytes.Clone(c.Secret),
		clock:   c.Clock,
		timeout: c.Timeout,
		scheme:  "http",
	}
	if cl.clock == nil {
		cl.clock = core.SystemClock()
	}
	if cl.timeout == 0 {
		cl.timeout = DefaultCallTimeout
	}
	dialer := &net.Dialer{Timeout: cl.timeout, KeepAlive: 30 * time.Second}
	cl.tr = &http.Transport{
		Proxy:                 nil, // nodes talk directly, whatever the environment says
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cl.timeout,
		ExpectContinueTimeout: expectContinueWait,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		// A non-nil, empty map keeps the transport on HTTP/1.1.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	if c.TLS != nil {
		cl.tr.TLSClientConfig = c.TLS.Clone()
		cl.scheme = "https"
	}
	cl.hc = &http.Client{
		Transport: cl.tr,
		// A peer never redirects; following one would send the request
		// elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return cl, nil
}

// Close closes the client's idle connections. The client remains usable.
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// SendCheckpoint streams body to the node at addr (host:port) as the
// checkpoint h, and returns once the receiver applied it, or an error.
// It never holds the body in memory, and it does not read body after it
// returned (if body is a pipe, make sure its writer ends when ctx does,
// as SendCheckpoint waits for a pending Read to return). h.From is
// ignored: the client's own node is sent.
//
// An error that the receiver answered wraps ErrRefused (a refusal: also
// core.ErrStaleCheckpoint for a checkpoint refused as stale, and
// ErrUnauthorized if the receiver did not authenticate the request) or
// ErrRemote (Apply failed there), and carries the receiver's reason.
// Other errors are the transport's, such as ctx's or a dial error. Every
// error names addr and the service.
func (c *Client) SendCheckpoint(ctx context.Context, addr string, h Header, body io.Reader) error {
	fail := func(err error) error {
		return fmt.Errorf("peer: checkpoint of %q (%v) to %s: %w", h.Service, h.Stamp, addr, err)
	}
	if body == nil {
		return fail(fmt.Errorf("%w: body is nil: give a reader of the state", core.ErrInvalidArgument))
	}
	req, br, err := c.checkpointRequest(ctx, addr, h, body)
	if err != nil {
		return fail(err)
	}
	resp, err := c.hc.Do(req)
	br.stop()
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		// The answer has no body; drain what there is so the connection
		// can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReasonBytes))
		return nil
	}
	return fail(readAnswerError(resp, true))
}

// checkpointRequest builds the signed request of SendCheckpoint and the
// reader that streams body into it, MACing it on the way.
func (c *Client) checkpointRequest(ctx context.Context, addr string, h Header, body io.Reader) (*http.Request, *bodyReader, error) {
	if err := core.ValidateName("checkpoint service name", h.Service); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", core.ErrInvalidArgument, err)
	}
	u, err := c.url(addr, "checkpoint", h.Service)
	if err != nil {
		return nil, nil, err
	}
	br := &bodyReader{src: body}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, br)
	if err != nil {
		return nil, nil, err
	}
	// Unknown length: chunked encoding, which carries the trailer.
	req.ContentLength = -1
	req.Header.Set(hService, h.Service)
	req.Header.Set(hEpoch, strconv.FormatInt(h.Stamp.Epoch, 10))
	req.Header.Set(hToken, strconv.FormatInt(h.Stamp.Token, 10))
	req.Header.Set(hSeq, strconv.FormatInt(h.Stamp.Seq, 10))
	req.Header.Set("Content-Type", "application/octet-stream")
	// The receiver answers before the body if it refuses the checkpoint
	// (Admit): the body is then not sent.
	req.Header.Set("Expect", "100-continue")
	reqMAC := c.sign(req)
	req.Trailer = http.Header{hBodyMAC: nil}
	br.trailer = req.Trailer
	br.mac = newBodyMAC(c.secret, reqMAC)
	return req, br, nil
}

// Call makes the call name (see Server.Handle) on the node at addr: it
// sends req as JSON and decodes the answer into resp (unless resp is
// nil). The call is bounded by ClientConfig.Timeout as well as ctx. Its
// errors are those of SendCheckpoint, for a call: an error of the
// receiver's handler wraps ErrRemote (or ErrRefused, and the core error,
// when the handler's error wraps one that travels, such as
// core.ErrNotPrimary) and carries its text.
func (c *Client) Call(ctx context.Context, addr, name string, req, resp any) error {
	fail := func(err error) error {
		return fmt.Errorf("peer: call %q to %s: %w", name, addr, err)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fail(fmt.Errorf("%w: encoding the request as JSON: %w", core.ErrInvalidArgument, err))
	}
	if len(data) > maxCallBytes {
		return fail(fmt.Errorf("%w: the request is %d bytes of JSON: the limit is %d", core.ErrInvalidArgument, len(data), maxCallBytes))
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	hr, err := c.callRequest(ctx, addr, name, data)
	if err != nil {
		return fail(err)
	}
	hresp, err := c.hc.Do(hr)
	if err != nil {
		return fail(err)
	}
	defer hresp.Body.Close()
	if hresp.StatusCode/100 != 2 {
		return fail(readAnswerError(hresp, false))
	}
	answer, err := io.ReadAll(io.LimitReader(hresp.Body, maxReplyBytes+1))
	if err != nil {
		return fail(fmt.Errorf("reading the answer: %w", err))
	}
	if len(answer) > maxReplyBytes {
		return fail(fmt.Errorf("the answer exceeds %d bytes", maxReplyBytes))
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(answer, resp); err != nil {
		return fail(fmt.Errorf("decoding the answer into %T: %w", resp, err))
	}
	return nil
}

// callRequest builds the signed request of Call, whose body is data.
func (c *Client) callRequest(ctx context.Context, addr, name string, data []byte) (*http.Request, error) {
	if err := core.ValidateName("call name", name); err != nil {
		return nil, fmt.Errorf("%w: %w", core.ErrInvalidArgument, err)
	}
	u, err := c.url(addr, "call", name)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	reqMAC := c.sign(req)
	m := newBodyMAC(c.secret, reqMAC)
	m.Write(data)
	req.Header.Set(hBodyMAC, hex.EncodeToString(m.Sum(nil)))
	return req, nil
}

func (c *Client) url(addr, kind, name string) (string, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil || strings.ContainsAny(addr, "/?#@") {
		return "", fmt.Errorf("%w: address %q is not host:port: give the peer's host and port", core.ErrInvalidArgument, addr)
	}
	u := url.URL{Scheme: c.scheme, Host: addr, Path: PathPrefix + kind + "/" + name}
	return u.String(), nil
}

// sign stamps req with the sender, time and a fresh nonce, sets its MAC,
// and returns the MAC.
func (c *Client) sign(req *http.Request) []byte {
	var nonce [nonceLen]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never fails
	req.Header.Set(hFrom, c.node)
	req.Header.Set(hTime, strconv.FormatInt(c.clock.Now().UnixNano(), 10))
	req.Header.Set(hNonce, hex.EncodeToString(nonce[:]))
	mac := requestMAC(c.secret, req.Method, req.URL.Path, req.Header)
	req.Header.Set(hAuth, hex.EncodeToString(mac))
	return mac
}

// readAnswerError reads the reason of a refusal or failure from resp.
func readAnswerError(resp *http.Response, staleOn409 bool) error {
	reason, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBytes))
	return answerError(resp.StatusCode, resp.Header.Get(hError), strings.TrimSpace(string(reason)), staleOn409)
}

// errSendEnded is what the transport reads from a checkpoint body after
// SendCheckpoint returned.
var errSendEnded = errors.New("peer: the checkpoint send has ended")

// bodyReader streams a checkpoint body to the transport, computes its MAC
// on the way, and sets the trailer when it reaches the end. After stop,
// it no longer reads its source: stop waits for a pending Read.
type bodyReader struct {
	mu      sync.Mutex
	src     io.Reader
	mac     hash.Hash
	trailer http.Header
	stopped bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return 0, errSendEnded
	}
	n, err := b.src.Read(p)
	if n < 0 || n > len(p) {
		return 0, fmt.Errorf("peer: checkpoint body reader returned %d bytes for a buffer of %d", n, len(p))
	}
	b.mac.Write(p[:n])
	if err == io.EOF {
		// The transport reads the trailer once Read returned io.EOF.
		b.trailer.Set(hBodyMAC, hex.EncodeToString(b.mac.Sum(nil)))
	}
	return n, err
}

func (b *bodyReader) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
}
