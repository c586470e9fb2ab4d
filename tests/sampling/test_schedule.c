/* test_schedule.c: the respaced diffusion schedule against known values.
 *
 * The expected numbers were computed by tools/ref/samplers_ref.py, whose
 * schedule() was checked to equal upstream create_diffusion(str(N))
 * exactly: timestep_map for every N in 1..1000, every coefficient array
 * for N = 2, 10, 50, 250 and 1000.
 */
#include <math.h>
#include <stdio.h>

#include "check.h"
#include "sampler.h"

static void check_close(const char *what, int i, double got, double want)
{
    CHECK(fabs(got - want) <= 1e-6 * fabs(want) + 1e-12, "%s[%d] = %.9g, want %.9g", what, i,
          got, want);
}

static void test_respace(void)
{
    int map[1000];
    static const int want10[10] = { 0, 111, 222, 333, 444, 555, 666, 777, 888, 999 };
    static const int want7[7] = { 0, 166, 333, 500, 666, 832, 999 }; /* half-to-even */
    static const int head250[8] = { 0, 4, 8, 12, 16, 20, 24, 28 };
    static const int tail250[8] = { 971, 975, 979, 983, 987, 991, 995, 999 };
    long sum = 0;
    CHECK(samp_respace(10, map) == 10, "N=10 count");
    for (int i = 0; i < 10; i++)
        CHECK(map[i] == want10[i], "N=10 map[%d] = %d, want %d", i, map[i], want10[i]);
    CHECK(samp_respace(7, map) == 7, "N=7 count");
    for (int i = 0; i < 7; i++)
        CHECK(map[i] == want7[i], "N=7 map[%d] = %d, want %d", i, map[i], want7[i]);
    CHECK(samp_respace(250, map) == 250, "N=250 count");
    for (int i = 0; i < 8; i++) {
        CHECK(map[i] == head250[i], "N=250 map[%d] = %d", i, map[i]);
        CHECK(map[242 + i] == tail250[i], "N=250 map[%d] = %d", 242 + i, map[242 + i]);
    }
    for (int i = 0; i < 250; i++)
        sum += map[i];
    CHECK(sum == 124875, "N=250 sum %ld", sum);
    CHECK(samp_respace(1, map) == 1 && map[0] == 0, "N=1");
    CHECK(samp_respace(1000, map) == 1000 && map[999] == 999, "N=1000");
    for (int n = 1; n <= 1000; n++)
        CHECK(samp_respace(n, map) == n, "N=%d gives distinct steps", n);
    CHECK(samp_respace(0, map) == -1 && samp_respace(1001, map) == -1, "range");
}

static void test_schedule(void)
{
    static samp_coef s[250];
    static const int at250[4] = { 0, 1, 124, 249 };
    static const double recip[4] = { 1.0000499486923218, 1.0003496408462524,
                                     3.5313923358917236, 157.41046142578125 };
    static const double recipm1[4] = { 0.01000049989670515, 0.0264479611068964,
                                       3.3868470191955566, 157.40728759765625 };
    static const double coef1[4] = { 1.0, 0.8569824695587158, 0.01234033890068531,
                                     0.0005127614713273942 };
    static const double coef2[4] = { 0.0, 0.1430175006389618, 0.9766643047332764,
                                     0.9604552984237671 };
    static const double log_min[4] = { -9.364627838134766, -9.364627838134766,
                                       -3.240387439727783, -2.5572311878204346 };
    static const double log_max[4] = { -9.21034049987793, -7.420139312744141,
                                       -3.236815929412842, -2.557227849960327 };
    static const double log_fixed[4] = { -9.364627838134766, -7.420139312744141,
                                         -3.236815929412842, -2.557227849960327 };
    static const double abar_prev[4] = { 1.0, 0.9998999834060669, 0.08346707373857498,
                                         4.3749751057475805e-05 };
    CHECK(samp_schedule(250, s) == 250, "N=250 count");
    for (int k = 0; k < 4; k++) {
        const samp_coef *c = &s[at250[k]];
        check_close("recip", at250[k], c->recip, recip[k]);
        check_close("recipm1", at250[k], c->recipm1, recipm1[k]);
        check_close("coef1", at250[k], c->coef1, coef1[k]);
        check_close("coef2", at250[k], c->coef2, coef2[k]);
        check_close("log_min", at250[k], c->log_min, log_min[k]);
        check_close("log_max", at250[k], c->log_max, log_max[k]);
        check_close("log_fixed", at250[k], c->log_fixed, log_fixed[k]);
        check_close("abar_prev", at250[k], c->abar_prev, abar_prev[k]);
    }
    CHECK(s[124].timestep == 497 && s[249].timestep == 999, "N=250 timesteps");
    CHECK(samp_schedule(10, s) == 10, "N=10 count");
    check_close("N=10 log_min", 9, s[9].log_min, -0.12836946547031403);
    check_close("N=10 coef2", 5, s[5].coef2, 0.5171026587486267);
    check_close("N=10 noise_level", 1, s[1].noise_level, 0.35552075);
    check_close("N=10 noise_level", 9, s[9].noise_level, 0.99997982);
    CHECK(samp_schedule(1, s) == 1 && s[0].timestep == 0 && s[0].log_fixed == 0.0f,
          "N=1: one step at t=0, no variance");
    CHECK(samp_schedule(0, s) == -1, "N=0 refused");
}

int main(void)
{
    test_respace();
    test_schedule();
    return check_exit();
}
