/* cmd_convert.c: `ditmoe convert`: a PyTorch checkpoint into a model directory.
 *
 * Options into dit_convert_params; the work is the library's dit_convert
 * (engine/model/convert.c), described here as a user sees it:
 *
 * Reads a .pt (or .safetensors) weight file with the engine's own readers,
 * infers the DiT-MoE config from the tensor shapes, and writes DIR/config.json
 * and DIR/model.safetensors (tensors as stored, or every floating-point one
 * converted with --dtype: F16 or BF16 halve the memory a model needs, and
 * the engine's kernel runs them at F32 speed; q8 stores the experts'
 * matrices, over 90% of a large model, in 8 bits). Shapes fix
 * everything but the attention head count, top-k, the class-dropout
 * convention and the training objective: those come from the published
 * preset the shapes match, else from options (--num-heads is then required;
 * prediction defaults to epsilon, top-k to 2, class_dropout_prob to 0.1, as
 * upstream). Models with 1000 classes get the ImageNet class names embedded
 * when config/imagenet_classes.txt is found (or --class-names FILE). When a
 * config.json sits beside the input (a model directory), its choices,
 * class names and VAE carry over instead, so `--dtype` converts a model
 * directory whole.
 * The result is read back with st_open and compared tensor by tensor, then
 * loaded as a model; on any failure the written files are removed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char convert_usage[] =
    "usage: ditmoe convert --in CHECKPOINT.pt --out DIR [--num-heads H]\n"
    "                      [--prediction epsilon|velocity] [--top-k K]\n"
    "                      [--class-dropout-prob P] [--class-names FILE] [--vae PATH]\n"
    "                      [--dtype f32|f16|bf16|q8]\n"
    "  --in FILE          torch.save checkpoint (state_dict, or {\"ema\"|\"model\": ...})\n"
    "  --out DIR          writes DIR/config.json and DIR/model.safetensors (DIR may\n"
    "                     exist, but not those files)\n"
    "  --num-heads H      attention heads (required unless the shapes match a preset)\n"
    "  --prediction P     epsilon (DDPM-trained) or velocity (rectified flow)\n"
    "  --top-k K          experts per token (default: preset's, else 2)\n"
    "  --class-dropout-prob P  > 0 when the label table has a null-class row (default 0.1)\n"
    "  --class-names FILE one class name per line (default for 1000 classes: ImageNet's)\n"
    "  --vae PATH         VAE directory for latent models, written as config \"vae\"\n"
    "  --dtype D          convert every float tensor to f32, f16 or bf16, rounding to\n"
    "                     nearest even as torch's .half()/.bfloat16() (default: as stored);\n"
    "                     q8: the routed and shared experts' matrices 8-bit (I8 values\n"
    "                     and an F16 NAME_scale per 32 inputs, about 1/4 of F32), the\n"
    "                     rest (attention, router, adaLN, embeddings, final layer) as\n"
    "                     stored; see docs/quantization.md\n";

static void conv_note(void *user, const char *note)
{
    (void)user;
    fprintf(stderr, "ditmoe: note: %s\n", note);
}

/* Typed parameters from the option strings (ranges the model knows are
 * checked by dit_convert). */
static int conv_params(dit_convert_params *p, const char *heads, const char *topk,
                       const char *dropout, const char *pred)
{
    int rc = 0;
    if (heads)
        rc = cli_int("num-heads", heads, 1, 1 << 20, &p->num_heads);
    if (!rc && topk)
        rc = cli_int("top-k", topk, 1, 1 << 20, &p->top_k);
    if (!rc && dropout)
        rc = cli_double("class-dropout-prob", dropout, 0, 0.999, &p->class_dropout_prob);
    if (!rc && pred) {
        if (strcmp(pred, "epsilon") && strcmp(pred, "velocity"))
            return cli_fail("--prediction: '%s' is not epsilon or velocity", pred);
        p->prediction = pred[0] == 'v' ? DIT_PRED_VELOCITY : DIT_PRED_EPSILON;
    }
    return rc;
}

int cmd_convert(int argc, char **argv)
{
    dit_convert_params p;
    dit_convert_params_default(&p);
    const char *heads = NULL, *topk = NULL, *dropout = NULL, *pred = NULL;
    const cli_opt opts[] = {
        { "in", &p.in, NULL }, { "out", &p.out, NULL }, { "num-heads", &heads, NULL },
        { "prediction", &pred, NULL }, { "top-k", &topk, NULL },
        { "class-dropout-prob", &dropout, NULL }, { "class-names", &p.class_names, NULL },
        { "vae", &p.vae, NULL }, { "dtype", &p.dtype, NULL },
    };
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), convert_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!p.in || !p.out) {
        fprintf(stderr, "ditmoe: convert needs --in and --out\n%s", convert_usage);
        return CLI_EUSAGE;
    }
    if ((rc = conv_params(&p, heads, topk, dropout, pred)))
        return rc;
    char err[1024] = "";
    if (dit_convert_check(&p, err, sizeof err)) {
        cli_fail("%s", err);
        return CLI_EUSAGE;
    }
    dit_convert_result r;
    rc = dit_convert(&p, conv_note, NULL, &r, err, sizeof err);
    if (rc)
        return cli_fail("%s", err[0] ? err : dit_strerror(rc));
    printf("%s -> %s: %d tensors, %s%s, %d classes%s\n", p.in, p.out, r.tensors,
           r.preset ? "preset " : "custom shapes", r.preset ? r.preset : "", r.num_classes,
           r.named ? " (named)" : "");
    return 0;
}
