// e2e-webhook: a minimal validating admission webhook for the e2e smoke test.
//
// It denies every object labelled e2e-deny=true and allows everything else. The
// API server reaches it through a Service's cluster IP, which proves that the
// control-plane node's network namespace can reach services (kube-proxy there).
// Standard library only; built static (CGO_ENABLED=0) and added to the testbox image.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
)

type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type admissionRequest struct {
	UID    string `json:"uid"`
	Object struct {
		Metadata struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	} `json:"object"`
}

type admissionResponse struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Status  *status `json:"status,omitempty"`
}

type status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func validate(w http.ResponseWriter, r *http.Request) {
	var review admissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "expected an AdmissionReview", http.StatusBadRequest)
		return
	}
	meta := review.Request.Object.Metadata
	resp := &admissionResponse{UID: review.Request.UID, Allowed: meta.Labels["e2e-deny"] != "true"}
	if !resp.Allowed {
		resp.Status = &status{Code: http.StatusForbidden, Message: "denied by e2e-webhook: " + meta.Name}
	}
	log.Printf("%s allowed=%v", meta.Name, resp.Allowed)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(admissionReview{APIVersion: review.APIVersion, Kind: review.Kind, Response: resp})
}

func main() {
	addr := flag.String("listen", ":8443", "address to serve HTTPS on")
	cert := flag.String("cert", "/tls/tls.crt", "TLS certificate (PEM)")
	key := flag.String("key", "/tls/tls.key", "TLS private key (PEM)")
	flag.Parse()
	http.HandleFunc("/validate", validate)
	log.Printf("serving on %s", *addr)
	log.Fatal(http.ListenAndServeTLS(*addr, *cert, *key, nil))
}
